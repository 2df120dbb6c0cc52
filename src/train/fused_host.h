// Host shim for fused.cu: compiles the CUDA kernels as plain C++ with a
// single "thread" (grid and block of size 1), which the kernels' grid-stride
// loops turn into a sweep over every element. The unit tests in fused.rs run
// them this way against the CPU twins, so the kernels' indexing and
// arithmetic are checked in CI without a GPU.
#include <algorithm>
#include <cmath>
#include <cstddef>

struct FusedHostDim {
    unsigned int x;
};
static const FusedHostDim blockIdx = {0}, threadIdx = {0}, blockDim = {1}, gridDim = {1};
#define __global__
using std::max;
using std::min;
