// Hugging Face folders: input = u16 little-endian length of config.json, config.json, then
// model.safetensors. Any bytes must load (and run one decoder step) or be refused with pbllm::Error.
#include "core/decoder.h"
#include "core/error.h"
#include "core/hf_model.h"
#include "tests/fuzz/fuzz_common.h"

#include <QDir>
#include <QFile>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size < 2)
        return 0;
    const std::size_t config_len = std::min<std::size_t>(data[0] | (data[1] << 8), size - 2);
    const std::string config = pbllm::fuzz::scratch_file(data + 2, config_len, ".json");
    const std::string tensors = pbllm::fuzz::scratch_file(data + 2 + config_len, size - 2 - config_len, ".safetensors");
    const QString dir = QString::fromStdString(config) + ".d";
    QDir().mkpath(dir);
    QFile::remove(dir + "/config.json");
    QFile::remove(dir + "/model.safetensors");
    QFile::rename(QString::fromStdString(config), dir + "/config.json");
    QFile::rename(QString::fromStdString(tensors), dir + "/model.safetensors");
    try {
        const pbllm::Model m = pbllm::load_hf(dir.toStdString());
        // A model that loads runs from its mapped bits: one decoder step reads every weight
        // through the F32/F16/BF16 matvec kernels (small models only, to keep executions fast).
        if (m.config.parameter_count() <= (1 << 20)) {
            auto decoder = pbllm::make_decoder(m, pbllm::DecoderBackend::Cpu, 2);
            decoder->step(0);
        }
    } catch (const pbllm::Error&) {
    }
    return 0;
}
