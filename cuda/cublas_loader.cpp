// Runtime loading of libcublas (see cuda/cublas_loader.h). dlopen/dlsym are in glibc (2.34+).
#include "cuda/cublas_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

namespace sd::cuda {

namespace {

// The C API prototypes used (cublas_api.h; enums are int-sized, handles and streams pointers).
using cublasCreate_t = int (*)(void** handle);
using cublasDestroy_t = int (*)(void* handle);
using cublasSetStream_t = int (*)(void* handle, void* stream);
using cublasGemmEx_t = int (*)(void* handle, int transa, int transb, int m, int n, int k, const void* alpha,
                               const void* A, int a_type, int lda, const void* B, int b_type, int ldb,
                               const void* beta, void* C, int c_type, int ldc, int compute_type, int algo);

struct Cublas {
  std::mutex mu;  // guards everything below; cuBLAS calls on the one handle are serialized
  std::vector<std::string> dirs;
  bool tried = false;
  Status load_status;
  std::string path;
  void* lib = nullptr;
  cublasCreate_t create = nullptr;
  cublasDestroy_t destroy = nullptr;
  cublasSetStream_t set_stream = nullptr;
  cublasGemmEx_t gemm_ex = nullptr;
  void* handle = nullptr;
};

Cublas& state() {
  static Cublas* s = new Cublas();  // never destroyed: the library stays loaded for the process
  return *s;
}

std::vector<std::string> split_dirs(const char* s) {
  std::vector<std::string> out;
  if (!s) return out;
  std::string cur;
  for (const char* p = s;; ++p) {
    if (*p == ':' || *p == '\0') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
      if (*p == '\0') break;
    } else {
      cur += *p;
    }
  }
  return out;
}

Status load_locked(Cublas& c) {
  if (c.tried) return c.load_status;
  c.tried = true;
  std::vector<std::string> dirs = c.dirs;
  for (const std::string& d : split_dirs(std::getenv("SPECDEC_CUBLAS_DIR"))) dirs.push_back(d);
  dirs.push_back("");  // the dynamic loader's own search path
  const char* versions[] = {".so.13", ".so.12", ".so"};
  std::string errors;
  for (const std::string& dir : dirs) {
    const std::string prefix = dir.empty() ? std::string() : dir + "/";
    for (const char* ver : versions) {
      // libcublas needs libcublasLt of the same version; load it first, globally, from the
      // same directory (the loader does not search a dlopen'ed path's directory).
      void* lt = dlopen((prefix + "libcublasLt" + ver).c_str(), RTLD_NOW | RTLD_GLOBAL);
      const std::string name = prefix + "libcublas" + ver;
      void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!lib) {
        const char* e = dlerror();
        if (errors.size() < 2000) errors += std::string("\n  ") + (e ? e : name.c_str());
        if (lt) dlclose(lt);
        continue;
      }
      c.create = reinterpret_cast<cublasCreate_t>(dlsym(lib, "cublasCreate_v2"));
      c.destroy = reinterpret_cast<cublasDestroy_t>(dlsym(lib, "cublasDestroy_v2"));
      c.set_stream = reinterpret_cast<cublasSetStream_t>(dlsym(lib, "cublasSetStream_v2"));
      c.gemm_ex = reinterpret_cast<cublasGemmEx_t>(dlsym(lib, "cublasGemmEx"));
      if (!c.create || !c.destroy || !c.set_stream || !c.gemm_ex) {
        errors += "\n  " + name + ": missing cublasCreate_v2/cublasSetStream_v2/cublasGemmEx";
        dlclose(lib);
        continue;
      }
      c.lib = lib;
      c.path = name;
      c.load_status = Status::Ok();
      return c.load_status;
    }
  }
  c.load_status = Status(StatusCode::kUnsupported,
                         "cuBLAS not found (libcublas.so.13/.so.12/.so): pip install nvidia-cublas (or "
                         "nvidia-cublas-cu12) and pass its lib directory with set_cublas_search_dirs or "
                         "SPECDEC_CUBLAS_DIR. Tried:" + errors);
  return c.load_status;
}

}  // namespace

void set_cublas_search_dirs(const std::vector<std::string>& dirs) {
  Cublas& c = state();
  std::lock_guard<std::mutex> lock(c.mu);
  c.dirs = dirs;
}

Status cublas_load(std::string* path) {
  Cublas& c = state();
  std::lock_guard<std::mutex> lock(c.mu);
  Status st = load_locked(c);
  if (st.ok() && path) *path = c.path;
  return st;
}

Status cublas_gemm_ex(void* stream, int transa, int transb, int m, int n, int k, float alpha, const void* A,
                      int a_type, int lda, const void* B, int b_type, int ldb, float beta, void* C, int c_type,
                      int ldc, int compute_type, int algo) {
  Cublas& c = state();
  std::lock_guard<std::mutex> lock(c.mu);
  SD_RETURN_IF_ERROR(load_locked(c));
  if (!c.handle) {
    // One process-wide handle, created on the device current at the first call.
    const int r = c.create(&c.handle);
    if (r != 0) {
      c.handle = nullptr;
      return Status(StatusCode::kInternal, "cublasCreate_v2 failed with cublasStatus " + std::to_string(r));
    }
  }
  int r = c.set_stream(c.handle, stream);
  if (r != 0) return Status(StatusCode::kInternal, "cublasSetStream_v2 failed with cublasStatus " + std::to_string(r));
  r = c.gemm_ex(c.handle, transa, transb, m, n, k, &alpha, A, a_type, lda, B, b_type, ldb, &beta, C, c_type, ldc,
                compute_type, algo);
  if (r != 0)
    return Status(StatusCode::kInternal, "cublasGemmEx failed with cublasStatus " + std::to_string(r) +
                                             " (7 = invalid value, 13 = execution failed, 15 = not supported)");
  return Status::Ok();
}

}  // namespace sd::cuda
