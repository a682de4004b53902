// nnpipe status: the description's get_status.
#include <iostream>

#include "command.h"
#include "pipeline/session.h"
#include "pipeline/status.h"

namespace {

NNPIPE_COMMAND("status",
               "Show a session's steps (status, outputs, errors) and the tail of its pipeline.log",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto session = std::make_shared<std::string>();
                 auto runs = std::make_shared<std::string>(nnpipe::default_runs_dir().string());
                 auto full_log = std::make_shared<bool>(false);
                 auto as_json = std::make_shared<bool>(false);
                 auto tail = std::make_shared<size_t>(20);
                 app.add_option("--session", *session, "Session id (folder under the runs folder)")
                     ->required();
                 app.add_option("--runs-dir", *runs,
                                "Runs folder (default: $NNPIPE_RUNS_DIR or ./runs)");
                 app.add_flag("--log", *full_log,
                              "Print the whole pipeline.log instead of its tail");
                 app.add_option("--tail", *tail, "Lines of pipeline.log to show (default 20)");
                 app.add_flag("--json", *as_json, "Print machine-readable JSON on stdout");
                 return [=] {
                   auto st = nnpipe::get_status(*runs, *session, *full_log ? 0 : *tail);
                   if (*as_json)
                     std::cout << nnpipe::dump_json(st, 2) << "\n";
                   else
                     std::cout << nnpipe::format_status(st);
                   return 0;
                 };
               });

}  // namespace
