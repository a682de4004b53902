// An address-space budget (RLIMIT_AS) for fuzz targets that read sizes from untrusted headers: an
// allocation sized by a lying header then fails inside the target (std::bad_alloc escapes, or the
// sanitizer's allocator reports it), and libFuzzer records it as a crash with its input.
//
// The limit is the address space mapped at start-up plus `budget`, not an absolute value: ASan
// reserves terabytes of shadow and allocator space up front (MAP_NORESERVE, mostly never touched),
// so an absolute RLIMIT_AS of a few GiB would fail the sanitizer itself. Mappings inside those
// reservations do not grow the address space; fresh mmaps (large mallocs, secondary allocator,
// std::vector of a claimed count) do, and hit the limit. libFuzzer's -rss_limit_mb (set by
// scripts/test) still catches many small allocations.
#pragma once
#include <sys/resource.h>

#include <cstdint>
#include <cstdio>
#include <cstring>

namespace nnpipe::fuzz {

// VmSize of this process in bytes (0 if /proc is not readable).
inline uint64_t mapped_bytes() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  unsigned long long kb = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, "VmSize:", 7) == 0) {
      std::sscanf(line + 7, "%llu", &kb);
      break;
    }
  std::fclose(f);
  return kb * 1024;
}

inline void limit_address_space(uint64_t budget) {
  const uint64_t now = mapped_bytes();
  if (now == 0) return;
  rlimit r{};
  r.rlim_cur = r.rlim_max = now + budget;
  if (setrlimit(RLIMIT_AS, &r) != 0) std::perror("setrlimit(RLIMIT_AS)");
  std::fprintf(stderr, "fuzz: RLIMIT_AS = %llu MiB mapped at start + %llu MiB\n",
               static_cast<unsigned long long>(now >> 20),
               static_cast<unsigned long long>(budget >> 20));
}

}  // namespace nnpipe::fuzz
