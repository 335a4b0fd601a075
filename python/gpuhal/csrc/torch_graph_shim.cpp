// The part of gpuhal's PyTorch allocator that C++ types force into C++: torch's
// beginAllocateToPool hook passes a MempoolId_t (a pair of integers) and a
// std::function<bool(cudaStream_t)> that says which streams' allocations go to the pool.
// This shim keeps those filters, asks them on every allocation, and sends matching ones to
// gpuhal_torch_malloc_in_pool; everything else goes straight to gpuhal_torch_malloc.
//
// It needs no torch headers: it spells the two hook types as torch declares them (ABI
// only), so it builds with any C++17 compiler. gpuhal/build_shim.py builds it.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <utility>
#include <vector>

struct CUstream_st;
using cudaStream_t = CUstream_st*;
// c10::cuda::MempoolId_t
using MempoolId = std::pair<unsigned long long, unsigned long long>;

extern "C" {
void* gpuhal_torch_malloc(std::ptrdiff_t size, int device, void* stream);
void* gpuhal_torch_malloc_in_pool(std::ptrdiff_t size, int device, void* stream, uint64_t first, uint64_t second);
void gpuhal_torch_free(void* ptr, std::ptrdiff_t size, int device, void* stream);
void gpuhal_torch_release_pool(int device, uint64_t first, uint64_t second);
}

namespace {

struct Route {
    int device;
    MempoolId pool;
    std::function<bool(cudaStream_t)> filter;
};

std::mutex routes_lock;
std::vector<Route> routes;
// Read without the lock on every allocation: nonzero only while a capture is routed.
std::atomic<std::size_t> active_routes{0};

}  // namespace

extern "C" void* gpuhal_shim_malloc(std::ptrdiff_t size, int device, cudaStream_t stream) {
    if (active_routes.load(std::memory_order_acquire) != 0) {
        std::lock_guard<std::mutex> guard(routes_lock);
        for (const Route& route : routes) {
            if (route.device == device && route.filter(stream)) {
                return gpuhal_torch_malloc_in_pool(size, device, stream, route.pool.first, route.pool.second);
            }
        }
    }
    return gpuhal_torch_malloc(size, device, stream);
}

extern "C" void gpuhal_shim_free(void* ptr, std::ptrdiff_t size, int device, cudaStream_t stream) {
    gpuhal_torch_free(ptr, size, device, stream);
}

// void(int, MempoolId_t, std::function<bool(cudaStream_t)>): torch's beginAllocateToPool.
extern "C" void gpuhal_shim_begin_allocate_to_pool(int device, MempoolId pool,
                                                   std::function<bool(cudaStream_t)> filter) {
    std::lock_guard<std::mutex> guard(routes_lock);
    routes.push_back(Route{device, pool, std::move(filter)});
    active_routes.store(routes.size(), std::memory_order_release);
}

// void(int, MempoolId_t): torch's endAllocateToPool. The pool keeps its memory.
extern "C" void gpuhal_shim_end_allocate_to_pool(int device, MempoolId pool) {
    std::lock_guard<std::mutex> guard(routes_lock);
    for (auto it = routes.begin(); it != routes.end(); ++it) {
        if (it->device == device && it->pool == pool) {
            routes.erase(it);
            break;
        }
    }
    active_routes.store(routes.size(), std::memory_order_release);
}

// void(int, MempoolId_t): torch's releasePool, when no graph uses the pool any more.
extern "C" void gpuhal_shim_release_pool(int device, MempoolId pool) {
    gpuhal_torch_release_pool(device, pool.first, pool.second);
}
