// Subcommands register themselves: each apps/nnpipe/cmd_*.cpp defines one with
// NNPIPE_COMMAND(name, description, setup) where setup adds options to the CLI11 subcommand and
// returns the function to run. Adding a command never touches main.cpp.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace nnpipe::cli {

using RunFn = std::function<int()>;
using SetupFn = std::function<RunFn(CLI::App&)>;

struct CommandSpec {
  std::string name;
  std::string description;
  SetupFn setup;
};

std::vector<CommandSpec>& registry();

struct Registrar {
  Registrar(std::string name, std::string description, SetupFn setup) {
    registry().push_back({std::move(name), std::move(description), std::move(setup)});
  }
};

}  // namespace nnpipe::cli

#define NNPIPE_CLI_CONCAT2(a, b) a##b
#define NNPIPE_CLI_CONCAT(a, b) NNPIPE_CLI_CONCAT2(a, b)
#define NNPIPE_COMMAND(name, description, setup) \
  static ::nnpipe::cli::Registrar NNPIPE_CLI_CONCAT(nnpipe_cmd_, __LINE__)(name, description, setup)
