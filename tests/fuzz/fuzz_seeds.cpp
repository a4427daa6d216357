// Writes the seed corpora of the fuzz targets from valid files made here: a tiny synthetic model
// as llama2.c v1 and as a Hugging Face folder, its RTN-quantized packed checkpoint, its
// calibration file, QuantPlan JSON, the shared tok512 SentencePiece model, two small byte-level
// BPE tokenizer.json files, and the folder of a `pbllm quantize` interrupted after its first layer.
// Usage: fuzz_seeds OUTPUT_DIR SHARED_DIR
#include "core/calibration.h"
#include "core/calibration_file.h"
#include "core/hf_model.h"
#include "core/llama2c.h"
#include "core/packed_checkpoint.h"
#include "core/ptq.h"
#include "core/quant/registry.h"
#include "core/quant/settings.h"
#include "core/streamed_ptq.h"
#include "core/synthetic.h"
#include "core/system.h"
#include "tests/fuzz/fuzz_common.h"

#include <QDir>
#include <QFile>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>

#include <cstdio>
#include <random>

using namespace pbllm;

namespace {

QByteArray read_all(const QString& path)
{
    QFile f(path);
    if (!f.open(QIODevice::ReadOnly))
        throw Error(path.toStdString() + ": cannot read");
    return f.readAll();
}

void write_all(const QString& path, const QByteArray& bytes)
{
    QFile f(path);
    if (!f.open(QIODevice::WriteOnly) || f.write(bytes) != bytes.size())
        throw Error(path.toStdString() + ": cannot write");
}

/// A byte-level tokenizer.json small enough to mutate: the 256 byte tokens (GPT-2's byte map),
/// a few merges, and the given normalizer, pre-tokenizer and added tokens; as a fuzz_bpe_tokenizer
/// input (u16 length, the JSON, then a text to encode).
QByteArray bpe_seed(const QJsonValue& normalizer, const QJsonObject& pre_tokenizer, bool merges_as_pairs)
{
    QJsonObject vocab;
    int next = 256;
    for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        vocab.insert(QString(QChar(printable ? b : next++)), b);
    }
    const QString space(QChar(0x120));
    const QStringList merges{space + " t", "h e", space + "t he", "1 2", "l l", "o " + space};
    QJsonArray merge_list;
    int id = 256;
    for (const QString& m : merges) {
        vocab.insert(QString(m).remove(' '), id++);
        const QStringList pair = m.split(' ');
        merge_list.append(merges_as_pairs ? QJsonValue(QJsonArray{pair[0], pair[1]}) : QJsonValue(m));
    }
    const QJsonObject root{
        {"model", QJsonObject{{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}, {"ignore_merges", merges_as_pairs}}},
        {"normalizer", normalizer},
        {"pre_tokenizer", pre_tokenizer},
        {"added_tokens",
         QJsonArray{QJsonObject{{"id", 300}, {"content", "<|end|>"}, {"special", true}, {"normalized", false}},
                    QJsonObject{{"id", 301}, {"content", "  "}, {"special", false}, {"normalized", true}, {"lstrip", true}},
                    QJsonObject{{"id", 302}, {"content", "<w>"}, {"special", true}, {"single_word", true}, {"rstrip", true}}}},
        {"post_processor",
         QJsonObject{{"type", "TemplateProcessing"},
                     {"single", QJsonArray{QJsonObject{{"SpecialToken", QJsonObject{{"id", "<|end|>"}, {"type_id", 0}}}},
                                           QJsonObject{{"Sequence", QJsonObject{{"id", "A"}, {"type_id", 0}}}}}},
                     {"special_tokens", QJsonObject{{"<|end|>", QJsonObject{{"id", "<|end|>"}, {"ids", QJsonArray{300}}}}}}}},
    };
    const QByteArray json = QJsonDocument(root).toJson(QJsonDocument::Compact);
    QByteArray out;
    out.append(static_cast<char>(json.size() & 0xFF)).append(static_cast<char>((json.size() >> 8) & 0xFF));
    return out + json + QByteArray("Hello the world, 12345 <|end|>  x <w> \xC3\xBCn\xC3\xAF\n\n  done");
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 3) {
        std::fprintf(stderr, "usage: fuzz_seeds OUTPUT_DIR SHARED_DIR\n");
        return 2;
    }
    try {
        const QDir out(QString::fromLocal8Bit(argv[1]));
        const QString shared = QString::fromLocal8Bit(argv[2]);
        for (const char* target : {"llama2c", "hf", "packed_checkpoint", "calibration_file", "quant_plan", "tokenizer", "resume",
                                   "bpe_tokenizer"})
            out.mkpath(target);
        const ModelConfig c = fuzz::tiny_config();
        ModelConfig tied = c;
        tied.tied_embeddings = true;
        const Model model = make_synthetic_model(c, 1);

        save_llama2c_v1(model, out.filePath("llama2c/tiny-v1.bin").toStdString());
        save_llama2c_v1(make_synthetic_model(tied, 2), out.filePath("llama2c/tiny-v1-tied.bin").toStdString());

        // Hugging Face folders of each family, so that every config key (rope_scaling, sliding_window,
        // head_dim), Qwen2's bias tensors and Qwen3's norms are in the corpus for mutation.
        ModelConfig llama31 = c, mistral = c, qwen2 = c, qwen3 = c;
        qwen2.arch = "qwen2";
        qwen3.arch = "qwen3";
        qwen3.explicit_head_dim = 4; // 2 heads of 4: the attention narrower than the stream (16)
        llama31.rope_scaling = {RopeScaling::Type::Llama3, 8.0f, 1.0f, 4.0f, 8};
        llama31.rope_theta = 500000.0f;
        mistral.arch = "mistral";
        mistral.sliding_window = 8;
        const std::pair<const char*, Model> hf_seeds[] = {
            {"hf/tiny", model}, {"hf/tiny-llama3-scaling", make_synthetic_model(llama31, 4)},
            {"hf/tiny-mistral", make_synthetic_model(mistral, 5)}, {"hf/tiny-qwen2", make_synthetic_model(qwen2, 6)},
            {"hf/tiny-qwen3", make_synthetic_model(qwen3, 7)}};
        for (const auto& [name, seed_model] : hf_seeds) {
            const QString hf = out.filePath("hf-folder");
            save_hf(seed_model, hf.toStdString());
            const QByteArray config = read_all(hf + "/config.json");
            QByteArray packed;
            packed.append(static_cast<char>(config.size() & 0xFF)).append(static_cast<char>(config.size() >> 8));
            write_all(out.filePath(name), packed + config + read_all(hf + "/model.safetensors"));
            QDir(hf).removeRecursively();
        }

        std::mt19937 rng(3);
        std::vector<std::vector<int>> windows(4, std::vector<int>(static_cast<std::size_t>(c.max_seq_len)));
        for (auto& w : windows)
            for (int& t : w)
                t = static_cast<int>(rng() % static_cast<unsigned>(c.vocab_size));
        for (const MethodInfo& method : methods()) { // every stored payload: one file per method
            if (!method.quantize)
                continue;
            QuantPlan plan;
            plan.config.layer.method = method.id;
            plan.config.layer.salient_ratio = method.id == QuantMethod::Rtn ? 0.1 : 0.3;
            write_packed_checkpoint(quantize_model(model, windows, plan),
                                    out.filePath(QString("packed_checkpoint/tiny-%1.pbllm.h5").arg(method.name)).toStdString());
        }
        { // the 8-bit scales payload of arb-rc
            QuantPlan plan;
            plan.config.layer.method = QuantMethod::ArbRc;
            plan.config.layer.block_binary.scale_format = ScaleFormat::Log8;
            write_packed_checkpoint(quantize_model(model, windows, plan),
                                    out.filePath("packed_checkpoint/tiny-arb-rc-log8.pbllm.h5").toStdString());
        }
        write_packed_checkpoint(quantize_model(make_synthetic_model(qwen3, 7), windows, QuantPlan{}), // format version 2
                                out.filePath("packed_checkpoint/tiny-qwen3.pbllm.h5").toStdString());
        write_calibration_file(calibrate(model, windows), c, out.filePath("calibration_file/tiny.calib.h5").toStdString());
        {
            CalibrationData streamed; // format_version 2: float32 Hessians
            streamed.windows = windows;
            streamed.seqlen = static_cast<int>(windows.front().size());
            calibrate_to_file(model, streamed, out.filePath("calibration_file/tiny-streamed.calib.h5").toStdString());
        }

        QuantPlan plan;
        write_all(out.filePath("quant_plan/defaults.json"), QByteArray::fromStdString(plan.to_json()));
        PlanRule down("model.layers.*.mlp.down_proj");
        down.values.salient_ratio = 0.3;
        down.values.salient_bits = 4;
        down.values.metric = SaliencyMetric::Magnitude;
        down.values.binarizer = Binarizer::Sign;
        plan.rules.push_back(down.mark("salient_ratio").mark("salient_bits").mark("metric").mark("binarizer"));
        PlanRule first("model.layers.0.*");
        first.values = with_method(first.values, QuantMethod::Gptq);
        first.values.bits = 3;
        plan.rules.push_back(first.mark("bits").mark("method"));
        write_all(out.filePath("quant_plan/rules.json"), QByteArray::fromStdString(plan.to_json()));
        plan.config.layer.block_binary.search = BillmSearch::Weights;
        PlanRule second("model.layers.1.*");
        second.values.method = QuantMethod::Billm;
        plan.rules.push_back(second.mark("method"));
        write_all(out.filePath("quant_plan/billm.json"), QByteArray::fromStdString(plan.to_json()));

        {
            const fuzz::ResumeRun& run = fuzz::resume_run();
            const QString work = out.filePath("resume-work");
            QDir().mkpath(work);
            QuantizeToFileOptions o;
            o.output = (work + "/out.pbllm.h5").toStdString();
            o.model_fingerprint = "fuzz";
            try { // stopped as the second (last) layer begins
                quantize_to_file(run.model, run.windows, run.plan, o, [](double, std::string_view stage) {
                    return stage.find("layer 2/2") == std::string_view::npos;
                });
                throw Error("the interrupted run for the resume seed was not interrupted");
            } catch (const Cancelled&) {
            }
            const QString dir = QString::fromStdString(partial_folder(o.output));
            fuzz::ResumeFiles f{read_all(dir + "/state.json").toStdString(), read_all(dir + "/layer-0000.h5").toStdString(),
                                read_all(dir + "/stream-0001.bin").toStdString()};
            const std::string sha = sha256_of_bytes(f.layer);
            const std::size_t at = f.state.find(sha);
            if (at == std::string::npos)
                throw Error("the interrupted run's state.json does not record its layer's checksum");
            f.state.replace(at, sha.size(), fuzz::kLayerChecksum);
            write_all(out.filePath("resume/interrupted-after-layer-0"), QByteArray::fromStdString(fuzz::pack_resume_files(f)));
            QDir(work).removeRecursively();
        }
        write_all(out.filePath("tokenizer/tok512.model"), read_all(shared + "/models/stories260K/tok512.model"));
        const QByteArray gpt2_style = bpe_seed(QJsonValue(), QJsonObject{{"type", "ByteLevel"}, {"add_prefix_space", true}}, false);
        write_all(out.filePath("bpe_tokenizer/gpt2-style"), gpt2_style);
        { // the embedded form, with BOS, EOS and further stop tokens in its header line
            const int json_len = static_cast<unsigned char>(gpt2_style[0]) | (static_cast<unsigned char>(gpt2_style[1]) << 8);
            const QByteArray embedded = "PBLLM-BPE 1 bos=300 eos=300 stops=300,302,97\n" + gpt2_style.mid(2, json_len);
            QByteArray seed;
            seed.append(static_cast<char>(embedded.size() & 0xFF)).append(static_cast<char>((embedded.size() >> 8) & 0xFF));
            write_all(out.filePath("bpe_tokenizer/embedded-stops"), seed + embedded + gpt2_style.mid(2 + json_len));
        }
        const QJsonObject llama3_split{
            {"type", "Split"},
            {"pattern", QJsonObject{{"Regex", R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
            {"behavior", "Isolated"}};
        const QJsonArray steps{QJsonObject{{"type", "Digits"}, {"individual_digits", true}}, llama3_split,
                               QJsonObject{{"type", "ByteLevel"}, {"use_regex", false}}};
        write_all(out.filePath("bpe_tokenizer/llama3-style"),
                  bpe_seed(QJsonObject{{"type", "Sequence"}, {"normalizers", QJsonArray{QJsonObject{{"type", "NFC"}}}}},
                           QJsonObject{{"type", "Sequence"}, {"pretokenizers", steps}}, true));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fuzz_seeds: %s\n", e.what());
        return 1;
    }
    return 0;
}
