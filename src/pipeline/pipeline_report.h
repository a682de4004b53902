// The end-of-pipeline report: one table with each step's status, time and losses, the paths of the
// final artefacts, and the commands to chat with the result.
#pragma once
#include <string>

#include "pipeline/pipeline.h"

namespace nnpipe {

// `binary` is how the report spells the nnpipe command (argv[0] as the user ran it).
std::string format_pipeline_report(const PipelineResult& r, const std::string& binary);

}  // namespace nnpipe
