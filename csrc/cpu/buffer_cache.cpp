// A caching CPU allocator for the fused model's forward: activation buffers allocated once, reused by
// every later forward of the same shapes.
//
// Why: oneDNN's fused convs return fresh tensors, and glibc hands large blocks back to the kernel (munmap,
// heap trim) when they are freed, so each forward faults its activations in again: 17,000 minor page
// faults, ~1.4 us each with the page zeroing, ~24 ms of a 357 ms SlowFast R50 8x8 forward (batch 1, fp32,
// 2 cores). Inductor's generated code reuses its buffers and faults none.
//
// While enabled (slowfast_kernels::cpu_buffer_cache_enable(true), which the fused model does around its
// forward), c10's CPU allocator is this one: blocks of kMinCachedBytes or more come from free lists keyed
// by their page-rounded size; a freed block returns to its list (whenever it is freed, also after the cache
// was disabled) until kMaxCachedBytes are cached, beyond which blocks go back to the system. Smaller blocks
// are plain aligned mallocs. Activation shapes repeat exactly from one forward to the next, so after the
// first forward every large block is a cache hit.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace slowfast_kernels {
namespace {

constexpr size_t kMinCachedBytes = size_t(256) << 10;  // smaller blocks are glibc's business (no faults)
constexpr size_t kPage = 4096;
constexpr size_t kAlignment = 64;                       // c10's own CPU alignment
constexpr size_t kMaxCachedBytes = size_t(4) << 30;     // a bound on idle memory, far above one forward's

class CachingCPUAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (nbytes == 0) {
      return {nullptr, nullptr, &CachingCPUAllocator::release, cpu};
    }
    const bool cached = nbytes >= kMinCachedBytes;
    const size_t size = cached ? (nbytes + kPage - 1) / kPage * kPage : nbytes;
    void* ptr = nullptr;
    std::lock_guard<std::mutex> guard(mutex_);
    if (cached) {
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        ptr = it->second.back();
        it->second.pop_back();
        cached_bytes_ -= size;
      }
    }
    if (ptr == nullptr && posix_memalign(&ptr, kAlignment, size) != 0) {
      TORCH_CHECK_WITH(OutOfMemoryError, false, "slowfast_kernels: CPU buffer cache: out of memory allocating ",
                       size, " bytes");
    }
    sizes_[ptr] = cached ? size : 0;
    // Context == data, with a raw deleter: oneDNN's scratchpads go through raw_allocate/raw_deallocate.
    return {ptr, ptr, &CachingCPUAllocator::release, cpu};
  }

  c10::DeleterFnPtr raw_deleter() const override {
    return &CachingCPUAllocator::release;
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  bool enable(bool on) {
    std::lock_guard<std::mutex> guard(mutex_);
    const bool was = enabled_;
    if (on && !enabled_) {
      c10::Allocator* current = c10::GetCPUAllocator();
      previous_ = current == this ? c10::GetDefaultCPUAllocator() : current;
      c10::SetCPUAllocator(this, /*priority=*/0);
      // A higher-priority allocator (another extension's) keeps its place: then the cache stays off.
      enabled_ = c10::GetCPUAllocator() == this;
    } else if (!on && enabled_) {
      c10::SetCPUAllocator(previous_, /*priority=*/0);
      enabled_ = false;
    }
    return was;
  }

  bool enabled() {
    std::lock_guard<std::mutex> guard(mutex_);
    return enabled_;
  }

  int64_t clear() {
    std::lock_guard<std::mutex> guard(mutex_);
    const int64_t freed = static_cast<int64_t>(cached_bytes_);
    for (auto& entry : free_) {
      for (void* p : entry.second) {
        std::free(p);
      }
    }
    free_.clear();
    cached_bytes_ = 0;
    return freed;
  }

  int64_t cached_bytes() {
    std::lock_guard<std::mutex> guard(mutex_);
    return static_cast<int64_t>(cached_bytes_);
  }

  static CachingCPUAllocator& instance() {
    static CachingCPUAllocator* allocator = new CachingCPUAllocator();  // never destroyed: blocks outlive exit
    return *allocator;
  }

 private:
  static void release(void* ptr) {
    if (ptr != nullptr) {
      instance().give_back(ptr);
    }
  }

  void give_back(void* ptr) {
    {
      std::lock_guard<std::mutex> guard(mutex_);
      auto it = sizes_.find(ptr);
      TORCH_INTERNAL_ASSERT(it != sizes_.end(), "slowfast_kernels: CPU buffer cache: freeing an unknown block");
      const size_t size = it->second;
      sizes_.erase(it);
      if (size != 0 && cached_bytes_ + size <= kMaxCachedBytes) {
        free_[size].push_back(ptr);
        cached_bytes_ += size;
        return;
      }
    }
    std::free(ptr);
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;   // page-rounded size -> idle blocks
  std::unordered_map<void*, size_t> sizes_;              // live block -> cached size (0: not cached)
  size_t cached_bytes_ = 0;
  bool enabled_ = false;
  c10::Allocator* previous_ = c10::GetDefaultCPUAllocator();
};

bool cpu_buffer_cache_enable(bool enabled) {
  return CachingCPUAllocator::instance().enable(enabled);
}

bool cpu_buffer_cache_enabled() {
  return CachingCPUAllocator::instance().enabled();
}

int64_t cpu_buffer_cache_clear() {
  return CachingCPUAllocator::instance().clear();
}

int64_t cpu_buffer_cache_bytes() {
  return CachingCPUAllocator::instance().cached_bytes();
}

}  // namespace

TORCH_LIBRARY_IMPL(slowfast_kernels, CompositeExplicitAutograd, m) {
  m.impl("cpu_buffer_cache_enable", &cpu_buffer_cache_enable);
  m.impl("cpu_buffer_cache_enabled", &cpu_buffer_cache_enabled);
  m.impl("cpu_buffer_cache_clear", &cpu_buffer_cache_clear);
  m.impl("cpu_buffer_cache_bytes", &cpu_buffer_cache_bytes);
}

}  // namespace slowfast_kernels
