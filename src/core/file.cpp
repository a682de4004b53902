#include "core/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace nnpipe {
namespace {

std::atomic<uint64_t> g_counter{0};

std::string errno_text() {
  return std::strerror(errno);
}

fs::path temp_name(const fs::path& path) {
  return fs::path(path.string() + fmt::format(".tmp-{}-{}", ::getpid(), g_counter++));
}

void fsync_dir(const fs::path& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

std::string read_file(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(ErrorCode::kIo, "{}: cannot open: {}", path.string(), errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail(ErrorCode::kIo, "{}: not a readable file", path.string());
  }
  std::string out;
  out.resize(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::read(fd, out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  out.resize(got);
  return out;
}

void write_file_atomic(const fs::path& path, std::string_view data) {
  std::string_view parts[] = {data};
  write_file_atomic(path, parts);
}

void write_file_atomic(const fs::path& path, std::span<const std::string_view> parts) {
  fs::path tmp = temp_name(path);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(ErrorCode::kIo, "{}: cannot create: {}", tmp.string(), errno_text());
  for (std::string_view part : parts) {
    const char* p = part.data();
    size_t left = part.size();
    while (left > 0) {
      ssize_t n = ::write(fd, p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        std::string why = errno_text();
        ::close(fd);
        ::unlink(tmp.c_str());
        fail(ErrorCode::kIo, "{}: write failed: {}", path.string(), why);
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail(ErrorCode::kIo, "{}: fsync/close failed: {}", path.string(), errno_text());
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string why = errno_text();
    ::unlink(tmp.c_str());
    fail(ErrorCode::kIo, "{}: rename failed: {}", path.string(), why);
  }
  fsync_dir(path.parent_path());
}

MappedFile::MappedFile(const fs::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(ErrorCode::kIo, "{}: cannot open: {}", path.string(), errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorCode::kIo, "{}: not a regular file", path.string());
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      std::string why = errno_text();
      ::close(fd);
      fail(ErrorCode::kIo, "{}: mmap failed: {}", path.string(), why);
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  reset();
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : path_(std::move(o.path_)), data_(o.data_), size_(o.size_) {
  o.data_ = nullptr;
  o.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    reset();
    path_ = std::move(o.path_);
    data_ = o.data_;
    size_ = o.size_;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

void MappedFile::reset() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

StagingDir::StagingDir(fs::path final_path) : final_(std::move(final_path)) {
  tmp_ = temp_name(final_);
  std::error_code ec;
  fs::create_directories(tmp_, ec);
  if (ec) fail(ErrorCode::kIo, "{}: cannot create directory: {}", tmp_.string(), ec.message());
}

StagingDir::~StagingDir() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
}

void StagingDir::commit() {
  std::error_code ec;
  if (fs::exists(final_, ec)) {
    // Move the old one aside first so that a crash between the two renames loses nothing.
    fs::path old = temp_name(final_);
    fs::rename(final_, old, ec);
    if (ec) fail(ErrorCode::kIo, "{}: cannot replace: {}", final_.string(), ec.message());
    fs::rename(tmp_, final_, ec);
    if (ec) fail(ErrorCode::kIo, "{}: cannot rename into place: {}", final_.string(), ec.message());
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp_, final_, ec);
    if (ec) fail(ErrorCode::kIo, "{}: cannot rename into place: {}", final_.string(), ec.message());
  }
  fsync_dir(final_.parent_path());
  committed_ = true;
}

}  // namespace nnpipe
