// The settings of `nnpipe serve`: command-line flags and a JSON config file with the same keys
// (the flag names without "--"; "-" or "_" between words). A flag given on the command line wins
// over the file. YAML is not read: Debian's yaml-cpp would be one more dependency for what JSON
// already says.
#pragma once
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "core/json.h"

namespace nnpipe::server {

struct ServeOptions {
  std::string model;               // GGUF file or HF directory
  std::vector<std::string> loras;  // NAME=FILE[:SCALE][+FILE[:SCALE]...]
  std::string alias;               // the base model's name in the API (default: the file's name)
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key, api_key_file;
  int parallel = 4;       // sequences decoded together
  int64_t ctx_size = 0;   // positions per sequence (0: min(4096, the model's context length))
  int64_t chunk = 256;    // prompt tokens per scheduler step
  int max_queue = 64;     // waiting jobs beyond which requests get 429
  int64_t max_loras = 0;  // adapters held at once (0: no bound)
  size_t max_body = size_t{8} << 20;  // request bytes beyond which the answer is 413
  int threads = 0;                    // compute threads (0: every core)
  int http_threads = 0;      // connections served at once (0: parallel + max_queue + 4, >= 8)
  int timeout = 600;         // seconds a connection may stay silent while a request is read/written
  bool runtime_lora = true;  // POST /v1/load_lora_adapter etc. (false: 403)

  // The connection threads httplib gets.
  int http_thread_count() const;
};

// The keys a config file may hold ("api-key", ...), with "-" between words.
const std::vector<std::string>& serve_option_keys();

// Sets the options `cfg` names, except those in `from_cli` (keys given as flags). Throws
// kInvalidArgument naming `origin` and the key for an unknown key or a value of the wrong type.
void apply_serve_config(ServeOptions& o, const json& cfg, const std::set<std::string>& from_cli,
                        const std::string& origin);
// Reads and applies a config file.
void load_serve_config(ServeOptions& o, const std::string& path,
                       const std::set<std::string>& from_cli);
// Checks ranges and reads --api-key-file (trailing whitespace dropped). Throws kInvalidArgument.
void finish_serve_options(ServeOptions& o);

}  // namespace nnpipe::server
