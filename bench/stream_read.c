/* A STREAM-style read of a buffer far larger than the caches: every thread
 * sums its own part with eight independent 256-bit loads per iteration.
 * bench/stream_read.sh builds it with -O3 -march=native and prints its GB/s
 * beside the probe `grok1 bench` divides by, so that a fraction of the read
 * roofline is only quoted against a probe that reads as fast as this. x86-64
 * with AVX2 only (the machine the figures in bench/RESULTS.md come from). */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <omp.h>
#include <immintrin.h>
int main(int argc,char**argv){
  size_t bytes=(size_t)strtoull(argc > 1 ? argv[1] : "1073741824", 0, 10);
  size_t n=bytes/8; uint64_t*a=aligned_alloc(64,n*8);
  #pragma omp parallel for schedule(static)
  for(size_t i=0;i<n;i++)a[i]=i;
  double best=0;
  for(int r=0;r<10;r++){
    double t=omp_get_wtime(); uint64_t s=0;
    #pragma omp parallel for schedule(static) reduction(+:s)
    for(size_t i=0;i<n;i+=32){
      __m256i x0=_mm256_load_si256((void*)(a+i)),x1=_mm256_load_si256((void*)(a+i+4)),x2=_mm256_load_si256((void*)(a+i+8)),x3=_mm256_load_si256((void*)(a+i+12));
      __m256i x4=_mm256_load_si256((void*)(a+i+16)),x5=_mm256_load_si256((void*)(a+i+20)),x6=_mm256_load_si256((void*)(a+i+24)),x7=_mm256_load_si256((void*)(a+i+28));
      x0=_mm256_add_epi64(x0,x1);x2=_mm256_add_epi64(x2,x3);x4=_mm256_add_epi64(x4,x5);x6=_mm256_add_epi64(x6,x7);
      x0=_mm256_add_epi64(x0,x2);x4=_mm256_add_epi64(x4,x6);x0=_mm256_add_epi64(x0,x4);
      s+=_mm256_extract_epi64(x0,0)+_mm256_extract_epi64(x0,1)+_mm256_extract_epi64(x0,2)+_mm256_extract_epi64(x0,3);
    }
    t=omp_get_wtime()-t; if(bytes/t/1e9>best)best=bytes/t/1e9; if(s==42)puts("");
  }
  printf("%.2f GB/s\n",best);
}
