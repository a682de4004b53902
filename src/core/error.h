// Typed errors. Library code throws nnpipe::Error; only C ABIs (src/capi) turn them into codes.
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace nnpipe {

enum class ErrorCode {
  kInvalidArgument,  // a parameter or flag the caller passed is wrong
  kIo,               // the OS refused a file operation
  kFormat,           // a file's contents are malformed (untrusted input)
  kUnsupported,      // well-formed, but a feature nnpipe does not implement
  kNotFound,         // a named thing (file, tensor, token, session) does not exist
  kInternal,         // a bug in nnpipe
};

const char* error_code_name(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

// Throws Error(code, fmt::format(...)).
template <typename... Args>
[[noreturn]] void fail(ErrorCode code, fmt::format_string<Args...> f, Args&&... args) {
  throw Error(code, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace nnpipe
