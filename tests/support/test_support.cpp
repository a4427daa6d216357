#include "tests/support/test_support.h"

#include "core/evaluation.h"
#include "core/llama2c.h"
#include "core/tokenizer.h"
#include "core/system.h"

#include <ATen/ATen.h>
#include <QFile>
#include <QFileInfo>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace pbllm::test {

namespace {
// Every suite draws the same random tensors on every run.
const bool seeded = [] {
    at::manual_seed(20231001);
    return true;
}();
} // namespace

std::string shared_dir()
{
    static const std::string dir = [] {
        const char* env = std::getenv("PBLLM_SHARED_DIR");
        const std::string d = env && *env ? std::string(env) : std::string(PBLLM_SOURCE_DIR) + "/../shared";
        if (!QFileInfo::exists(QString::fromStdString(d + "/models/stories260K/stories260K.bin"))) {
            std::fprintf(stderr,
                         "FATAL: the shared model and data folder was not found at %s.\n"
                         "The tests read ../shared beside the source tree (models/stories260K, data/tinystories);\n"
                         "set PBLLM_SHARED_DIR to its location.\n",
                         d.c_str());
            std::exit(2);
        }
        return QFileInfo(QString::fromStdString(d)).canonicalFilePath().toStdString();
    }();
    return dir;
}

std::string stories260k_path() { return shared_dir() + "/models/stories260K/stories260K.bin"; }
std::string tok512_path() { return shared_dir() + "/models/stories260K/tok512.model"; }
std::string tinystories_val_path() { return shared_dir() + "/data/tinystories/tinystories_val.txt"; }
std::string tinystories_train_path() { return shared_dir() + "/data/tinystories/tinystories_train_head.txt"; }
std::string pbllm_executable() { return std::string(PBLLM_BINARY_DIR) + "/bin/pbllm"; }

const std::vector<int>& tinystories_train_tokens()
{
    static const std::vector<int> tokens =
        Tokenizer::from_file(tok512_path()).encode(read_text_file(tinystories_train_path()));
    return tokens;
}

const Model& stories260k()
{
    static const Model model = load_llama2c(stories260k_path());
    return model;
}

ModelConfig small_family_config(const std::string& family)
{
    ModelConfig c;
    c.dim = 32; c.hidden_dim = 64; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2; c.vocab_size = 50257;
    c.max_seq_len = 64;
    if (family == "llama-3.1") {
        c.rope_scaling = {RopeScaling::Type::Llama3, 8.0f, 1.0f, 4.0f, 16};
        c.rope_theta = 500000.0f;
    } else if (family == "mistral") {
        c.arch = "mistral";
        c.sliding_window = 32;
    } else if (family == "qwen2.5") {
        c.arch = "qwen2";
        c.rope_theta = 1000000.0f;
    } else if (family == "smollm") {
        c.tied_embeddings = true;
        c.n_kv_heads = 1;
    } else if (family == "qwen3") {
        c.arch = "qwen3";
        c.explicit_head_dim = 16;
        c.rope_theta = 1000000.0f;
    } else if (family != "llama") {
        throw std::invalid_argument("small_family_config: unknown family " + family);
    }
    return c;
}

void write_bytes(const QString& path, const std::string& bytes)
{
    QFile f(path);
    if (!f.open(QIODevice::WriteOnly) || f.write(bytes.data(), static_cast<qint64>(bytes.size())) !=
                                             static_cast<qint64>(bytes.size()))
        std::abort();
}

std::string read_bytes(const QString& path) { return read_file_bytes(path.toStdString()); }

double max_abs_diff(const at::Tensor& a, const at::Tensor& b)
{
    return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

} // namespace pbllm::test
