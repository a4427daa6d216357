#pragma once
// Timing helpers and hardware yardsticks shared by the benchmark suites.
#include <QStringList>

#include <functional>
#include <string>
#include <vector>

namespace pbllm::cli {

double seconds_of(const std::function<void()>& work);
double median(std::vector<double> v);
/// Median over `runs` of `rate_of_one_run()` after one warm-up run.
double median_rate(int runs, const std::function<double()>& rate_of_one_run);

struct Baselines {
    double matmul_gflops = 0.0; ///< fp32 2048^2 GEMM
    double memory_gbps = 0.0;   ///< streaming read of 512 MiB with all threads
};
Baselines measure_baselines(int runs);

int run_quant_bench(int runs, bool json);
/// `only`: comma-separated method names to time ("" = every post-training method).
int run_methods_bench(int runs, bool json, const std::string& only);
/// Packed vs dequantized float32 vs FP16 on a SYNTHETIC model of `shape` (layers > 0: that many).
int run_packed_bench(int runs, int gen_tokens, const std::string& shape, int layers, double ratio, bool json);
/// The packed kernels alone: one 4096 x 4096 matvec in cache on one thread, and from memory on
/// all threads, against float32 and FP16 rows.
int run_kernel_bench(int runs, double ratio, bool json);
/// A packed file's quality when run packed: perplexity and KL divergence to the dequantized path
/// (batched, and decoder with float32 and int8 activations), greedy text agreement.
int run_packed_quality(const std::string& file, const std::string& text, int max_windows, int gen_tokens, bool json);

/// Encoding speed (MB/s, one thread) of each tokenizer file on the first MiB of `text_path`; empty
/// lists take tok512 and the byte-level BPE files of the shared folder, and tinystories_val.
int run_tokenizer_bench(int runs, const QStringList& tokenizer_files, const std::string& text_path, bool json);

} // namespace pbllm::cli
