// Files: whole-file reads, atomic writes (temp + fsync + rename), read-only mmap, and staging
// directories that appear under their final name only when complete.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace nnpipe {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path);
// Writes to `path.tmp-<pid>-<n>`, fsyncs, renames over `path`, fsyncs the directory.
void write_file_atomic(const fs::path& path, std::string_view data);
void write_file_atomic(const fs::path& path, std::span<const std::string_view> parts);

// A read-only memory map of a whole file. Empty files map to an empty span.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const fs::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const fs::path& path() const { return path_; }

 private:
  void reset();
  fs::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// A directory built under a temporary name beside `final_path` and renamed into place by
// commit(). If destroyed without commit() (an error was thrown), the partial output is removed,
// so a failed step never leaves a half-written model or adapter behind.
class StagingDir {
 public:
  explicit StagingDir(fs::path final_path);
  ~StagingDir();
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;

  const fs::path& path() const { return tmp_; }  // write files here
  const fs::path& final_path() const { return final_; }
  // Replaces any existing final_path.
  void commit();

 private:
  fs::path final_;
  fs::path tmp_;
  bool committed_ = false;
};

}  // namespace nnpipe
