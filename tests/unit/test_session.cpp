#include <gtest/gtest.h>

#include "core/error.h"
#include "core/json.h"
#include "pipeline/session.h"
#include "pipeline/status.h"

using namespace nnpipe;

TEST(RunSession, RejectsIdsThatEscapeRuns) {
  for (const std::string& bad :
       std::vector<std::string>{"", ".", "..", "a/b", "../x", "a\\b", std::string("a\0b", 3),
                                "tab\there", "x\x7f", std::string(129, 'a')}) {
    EXPECT_THROW(validate_session_id(bad), Error) << bad;
  }
  for (const std::string& good :
       std::vector<std::string>{"RandomSession", "run-1_2.3", std::string(128, 'a'), "ünïcode"}) {
    EXPECT_NO_THROW(validate_session_id(good)) << good;
  }
  try {
    validate_session_id("../etc");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("position 2"), std::string::npos) << e.what();
  }
}

TEST(RunSession, StepWritesSummaryOnSuccessAndFailure) {
  fs::path runs = fs::temp_directory_path() / "nnpipe_test_runs";
  fs::remove_all(runs);
  {
    RunSession s(runs, "s1");
    run_step(s, "ok_step", {{"lr", 0.1}}, [](StepContext& c) {
      c.set_output("model", "path/x");
      c.set_metric("loss", 1.5);
    });
    EXPECT_THROW(run_step(s, "bad_step", json::object(),
                          [](StepContext&) { throw Error(ErrorCode::kFormat, "boom"); }),
                 Error);
    EXPECT_THROW(run_step(s, "../evil", json::object(), [](StepContext&) {}), Error);
  }
  json ok = read_json_file(runs / "s1" / "ok_step" / "summary.json");
  EXPECT_EQ(ok["status"], "Success");
  EXPECT_EQ(ok["parameters"]["lr"], 0.1);
  EXPECT_EQ(ok["outputs"]["model"], "path/x");
  EXPECT_EQ(ok["metrics"]["loss"], 1.5);
  EXPECT_TRUE(ok["error"].is_null());
  json bad = read_json_file(runs / "s1" / "bad_step" / "summary.json");
  EXPECT_EQ(bad["status"], "Failure");
  EXPECT_EQ(bad["error"], "boom");
  EXPECT_FALSE(fs::exists(runs / "evil"));

  std::string log = read_file(runs / "s1" / "pipeline.log");
  EXPECT_NE(log.find("[ok_step] step ok_step started"), std::string::npos) << log;
  EXPECT_NE(log.find("boom"), std::string::npos);

  json st = get_status(runs, "s1", 0);
  ASSERT_EQ(st["steps"].size(), 2u);
  EXPECT_EQ(st["steps"][0]["step"], "ok_step");
  EXPECT_EQ(st["steps"][1]["status"], "Failure");
  EXPECT_FALSE(st["log"].empty());
  EXPECT_NE(format_status(st).find("error: boom"), std::string::npos);
  EXPECT_THROW(get_status(runs, "nope", 0), Error);
  fs::remove_all(runs);
}
