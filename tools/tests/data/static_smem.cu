// Static and dynamic shared memory, for the res-usage sample of tools/tests.
__global__ void tile_sum(const float* x, float* out) {
  __shared__ float tile[4096];  // 16384 B static
  tile[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int i = 0; i < blockDim.x; ++i) s += tile[i];
    out[blockIdx.x] = s;
  }
}

__global__ void dyn_sum(const float* x, float* out) {
  extern __shared__ float buf[];  // dynamic: set at launch, 0 B static
  buf[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = buf[0] + buf[blockDim.x - 1];
}
