# Warnings, ccache and sanitizers: one place for project-wide compiler settings.
find_program(CCACHE_PROGRAM ccache)
if(CCACHE_PROGRAM)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
  set(CMAKE_C_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
endif()

# Applied per target (not globally) so that third-party headers do not drown our own warnings.
function(pbllm_target_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
endfunction()

option(PBLLM_OPENMP "Compile with OpenMP (libtorch's parallel_for needs it to run in parallel)" ON)
option(PBLLM_FUZZ "Build the libFuzzer targets of tests/fuzz (clang; implies PBLLM_SANITIZE)" OFF)
if(PBLLM_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "PBLLM_FUZZ needs clang (libFuzzer); configure with the 'fuzz' preset")
  endif()
  set(PBLLM_SANITIZE ON)
  # Coverage instrumentation everywhere (core, the tokenizer plugin); the fuzzer main only in
  # the fuzz targets.
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()
option(PBLLM_SANITIZE "Build with AddressSanitizer and UndefinedBehaviorSanitizer" OFF)
if(PBLLM_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()

# libtorch parallelises with OpenMP; the pthread flavour of OpenBLAS runs its own thread pool
# beside it, and on few cores the two pools oversubscribe them (perplexity of stories260K ran 3x
# slower on 2 cores). The OpenMP flavour shares libgomp's pool. Executables prefer it through a
# DT_RPATH, which, unlike RUNPATH, also governs libtorch's own dependency on libblas.so.3.
find_path(PBLLM_OPENMP_BLAS_DIR libblas.so.3
          PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp NO_DEFAULT_PATH)
function(pbllm_executable_settings target)
  pbllm_target_warnings(${target})
  if(PBLLM_OPENMP_BLAS_DIR)
    target_link_options(${target} PRIVATE "LINKER:--disable-new-dtags" "LINKER:-rpath,${PBLLM_OPENMP_BLAS_DIR}")
  endif()
endfunction()
