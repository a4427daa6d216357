#include "core/model_io.h"

#include "core/error.h"
#include "core/hf_model.h"
#include "core/llama2c.h"
#include "core/packed_checkpoint.h"
#include "core/system.h"
#include "core/tokenizer.h"

#include <ATen/ATen.h>
#include <QDir>
#include <QFileInfo>
#include <QProcess>
#include <QStandardPaths>

#include <cstdlib>
#include <sys/mman.h>
#include <cstring>
#include <fstream>

#ifndef PBLLM_SOURCE_DIR
#define PBLLM_SOURCE_DIR ""
#endif

namespace pbllm {
namespace {

std::string env(const char* name)
{
    const char* v = std::getenv(name);
    return v ? std::string(v) : std::string();
}

bool is_file(const std::string& p) { return !p.empty() && QFileInfo(QString::fromStdString(p)).isFile(); }

std::string user_model_dir()
{
    std::string base = env("XDG_DATA_HOME");
    if (base.empty())
        base = env("HOME").empty() ? std::string("/tmp") : env("HOME") + "/.local/share";
    return base + "/pbllm/models/stories260K";
}

/// Reads llama2.c's tokenizer.bin scores (int32 max_len, then {float score, int32 len, bytes}).
std::vector<float> llama2c_tokenizer_scores(const std::string& path)
{
    const std::string bytes = read_file_bytes(path);
    std::vector<float> scores;
    std::size_t at = 4;
    while (at + 8 <= bytes.size()) {
        float score;
        std::int32_t len;
        std::memcpy(&score, bytes.data() + at, 4);
        std::memcpy(&len, bytes.data() + at + 4, 4);
        if (len < 0 || at + 8 + static_cast<std::size_t>(len) > bytes.size())
            throw Error(path + ": malformed llama2.c tokenizer file");
        scores.push_back(score);
        at += 8 + static_cast<std::size_t>(len);
    }
    return scores;
}

void download(const std::string& url, const std::string& dest)
{
    QProcess curl;
    const std::string partial = dest + ".part";
    curl.start("curl", {"-fsSL", "--retry", "2", "--connect-timeout", "15", "-o", QString::fromStdString(partial),
                        QString::fromStdString(url)});
    if (!curl.waitForStarted(10000))
        throw Error("cannot run curl to download " + url + " (is curl installed?)");
    curl.waitForFinished(-1);
    if (curl.exitStatus() != QProcess::NormalExit || curl.exitCode() != 0) {
        QFile::remove(QString::fromStdString(partial));
        throw Error("download of " + url + " failed: " + curl.readAllStandardError().trimmed().toStdString());
    }
    QFile::remove(QString::fromStdString(dest));
    if (!QFile::rename(QString::fromStdString(partial), QString::fromStdString(dest)))
        throw Error(dest + ": cannot move the downloaded file into place");
}

ModelLocation download_default_model(const std::string& dir, const std::string& base, const ProgressFn& progress)
{
    const std::string where_to_put =
        "Put stories260K.bin and tok512.model (see docs: karpathy/tinyllamas, stories260K) into " + dir +
        ", or point PBLLM_MODEL at a model file or folder.";
    if (!QDir().mkpath(QString::fromStdString(dir)))
        throw Error(dir + ": cannot create the model folder. " + where_to_put);
    try {
        report_progress(progress, 0.0, "downloading stories260K");
        const std::string model = dir + "/stories260K.bin", vocab_bin = dir + "/tok512.bin",
                          tokenizer = dir + "/tok512.model";
        download(base + "/stories260K.bin", model);
        if (sha256_of_file(model) != kStories260kSha256) {
            QFile::remove(QString::fromStdString(model));
            throw Error(model + ": SHA-256 does not match the published stories260K.bin; the file was removed");
        }
        report_progress(progress, 0.6, "downloading tok512 tokenizer");
        download(base + "/tok512.bin", vocab_bin);
        download(base + "/tok512.model", tokenizer);
        // tok512.model has no published checksum; tok512.bin has one and holds the same vocabulary,
        // so the SentencePiece model is verified piece score by piece score against it.
        if (sha256_of_file(vocab_bin) != kTok512BinSha256)
            throw Error(vocab_bin + ": SHA-256 does not match the published tok512.bin");
        const std::vector<float> expected = llama2c_tokenizer_scores(vocab_bin);
        const Tokenizer tok = Tokenizer::from_file(tokenizer);
        bool same = tok.vocab_size() == static_cast<int>(expected.size());
        for (int id = 0; same && id < tok.vocab_size(); ++id)
            same = tok.score(id) == expected[id];
        if (!same) {
            QFile::remove(QString::fromStdString(tokenizer));
            throw Error(tokenizer + ": its vocabulary does not match tok512.bin; the file was removed");
        }
        report_progress(progress, 1.0, "downloaded");
        return {model, tokenizer, "downloaded"};
    } catch (const Cancelled&) {
        throw;
    } catch (const Error& e) {
        throw Error(std::string("the default model stories260K is not available: ") + e.what() + ". " + where_to_put);
    }
}

} // namespace

Model load_model(const std::string& path, const LoadOptions& options)
{
    const QFileInfo info(QString::fromStdString(path));
    if (!info.exists())
        throw Error(path + ": no such file or folder");
    Model m;
    if (looks_like_hf(path)) {
        m = load_hf(path, options.check_finite);
    } else if (info.isDir()) {
        throw Error(path + ": folder has no config.json; give the model file itself");
    } else if (has_hdf5_signature(path)) {
        const bool runtime = options.packed && options.device.is_cpu();
        m = read_packed_checkpoint(path, runtime ? PackedLoad::Runtime : PackedLoad::Dequantized).quantized.model;
    } else {
        m = load_llama2c(path);
    }
    m.tokenizer_path = options.tokenizer_path.empty() ? find_tokenizer_beside(path) : options.tokenizer_path;
    if (!options.device.is_cpu()) {
        const at::ScalarType dtype = m.file_dtype == "bf16" ? at::kBFloat16 : at::kHalf;
        m = m.to(options.device, dtype);
    } else if (options.storage == WeightStorage::Float32 && m.format == ModelFormat::HuggingFace) {
        // Owned float32 memory, as the quantizers and QAT expect (they may write in place; the
        // mapped views are read-only).
        require_memory(m.config.parameter_count() * 4,
                       m.source_path + " in float32 (" + std::to_string(m.config.parameter_count()) + " parameters)");
        m = m.to(at::kCPU, at::kFloat, /*copy=*/true);
    }
    return m;
}

Model resident_copy(const Model& model)
{
    std::int64_t bytes = 0;
    for (const NamedTensor& t : model.named_tensors())
        bytes += t.tensor.numel() * static_cast<std::int64_t>(t.tensor.element_size());
    require_memory(bytes, model.source_path + " held in memory");
    auto copy = [](const at::Tensor& t) {
        if (!t.device().is_cpu())
            return t;
        at::Tensor out = at::empty(t.sizes(), t.options());
        const std::size_t huge = 2u << 20, size = static_cast<std::size_t>(out.nbytes());
        const auto begin = reinterpret_cast<std::uintptr_t>(out.data_ptr());
        const std::uintptr_t first = (begin + huge - 1) / huge * huge, last = (begin + size) / huge * huge;
        if (last > first) // before the first touch, so the pages come in huge
            ::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
        out.copy_(t);
        return out;
    };
    return model.map(copy);
}

DefaultModelSearch default_model_search()
{
    DefaultModelSearch s;
    s.user_path = env("PBLLM_MODEL");
    if (const std::string shared = env("PBLLM_SHARED_DIR"); !shared.empty())
        s.shared_dirs.push_back(shared);
    s.shared_dirs.push_back(QDir::currentPath().toStdString() + "/../shared");
    if (*PBLLM_SOURCE_DIR)
        s.shared_dirs.push_back(std::string(PBLLM_SOURCE_DIR) + "/../shared");
    s.user_dir = user_model_dir();
    s.url = env("PBLLM_MODEL_URL");
    if (s.url.empty())
        s.url = "https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K";
    return s;
}

ModelLocation locate_default_model(const DefaultModelSearch& search, const ProgressFn& progress)
{
    if (!search.user_path.empty()) {
        if (!QFileInfo::exists(QString::fromStdString(search.user_path)))
            throw Error("PBLLM_MODEL=" + search.user_path + ": no such file or folder");
        return {search.user_path, find_tokenizer_beside(search.user_path), "PBLLM_MODEL"};
    }
    for (const std::string& shared : search.shared_dirs) {
        const std::string dir = shared + "/models/stories260K";
        if (is_file(dir + "/stories260K.bin") && is_file(dir + "/tok512.model"))
            return {QFileInfo(QString::fromStdString(dir + "/stories260K.bin")).canonicalFilePath().toStdString(),
                    QFileInfo(QString::fromStdString(dir + "/tok512.model")).canonicalFilePath().toStdString(),
                    "shared folder"};
    }
    const std::string& dir = search.user_dir;
    if (is_file(dir + "/stories260K.bin") && is_file(dir + "/tok512.model"))
        return {dir + "/stories260K.bin", dir + "/tok512.model", "user data folder"};
    return download_default_model(dir, search.url, progress);
}

ModelLocation locate_default_model(const ProgressFn& progress)
{
    return locate_default_model(default_model_search(), progress);
}

Tokenizer tokenizer_for(const Model& model)
{
    if (model.tokenizer_path.empty() && !model.embedded_tokenizer.empty())
        return Tokenizer::from_bytes(model.embedded_tokenizer, model.source_path + " (embedded tokenizer)");
    if (model.tokenizer_path.empty())
        throw Error(model.source_path + ": no tokenizer found beside the model (tokenizer.model, a single "
                                        "*.model file or tokenizer.json); give one with --tokenizer");
    Tokenizer tok = Tokenizer::from_file(model.tokenizer_path);
    // Models often pad their embedding past the tokenizer's ids (Qwen2.5: 151936 rows, 151665 tokens);
    // a tokenizer with ids past the embedding would index outside it.
    if (tok.vocab_size() > model.config.vocab_size)
        throw Error(model.tokenizer_path + ": tokenizer has " + std::to_string(tok.vocab_size()) +
                    " tokens but the model's vocabulary is " + std::to_string(model.config.vocab_size));
    return tok;
}

} // namespace pbllm
