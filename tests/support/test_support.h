#pragma once
// Paths to the shared model and data, and small file helpers for the test suites.
#include "core/model.h"

#include <QString>

#include <string>
#include <vector>

namespace pbllm::test {

/// How long a test waits for asynchronous work before calling it hung: a bound for hangs, not a
/// speed expectation (a machine shared with other busy processes can be many times slower).
constexpr int kPatientMs = 30 * 60 * 1000;

/// ../shared beside the source tree, or $PBLLM_SHARED_DIR. Aborts the test run with a clear
/// message when it is missing.
std::string shared_dir();
std::string stories260k_path();     ///< models/stories260K/stories260K.bin
std::string tok512_path();          ///< models/stories260K/tok512.model
std::string tinystories_val_path(); ///< data/tinystories/tinystories_val.txt
std::string tinystories_train_path();
/// The pbllm executable of this build.
std::string pbllm_executable();

/// tinystories_train_head.txt tokenized with tok512 (once per process).
const std::vector<int>& tinystories_train_tokens();

/// Loads stories260K (float32, CPU) once per process and returns a shared copy.
const Model& stories260k();

/// A small configuration of `family`, sized for GPT-2's tokenizer (vocabulary 50257; dim 32, hidden
/// 64, 2 layers, 4 heads with 2 KV heads, context 64): "llama", "llama-3.1" (llama3 RoPE scaling x8
/// from 16 positions, theta 500000), "mistral" (sliding window 32), "qwen2.5" (q/k/v biases, theta
/// 1e6), "smollm" (tied head, GQA 4/1), "qwen3" (q/k norms, head_dim 16 over the stream's 32, theta 1e6).
ModelConfig small_family_config(const std::string& family);

void write_bytes(const QString& path, const std::string& bytes);
std::string read_bytes(const QString& path);

/// max |a - b| over all elements (float64).
double max_abs_diff(const at::Tensor& a, const at::Tensor& b);

} // namespace pbllm::test
