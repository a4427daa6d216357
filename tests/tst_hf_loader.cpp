// Hugging Face safetensors: export/import round trips (single file, shards, f16/bf16, untied
// head), equal logits to the llama2.c original, and every malformed-input case by name.
#include "core/error.h"
#include "core/hf_model.h"
#include "core/model_io.h"
#include "core/llama.h"
#include "core/llama2c.h"
#include "core/safetensors.h"
#include "core/synthetic.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <QDir>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>

#include <cstring>

using namespace pbllm;
using namespace pbllm::test;

namespace {

/// Rewrites config.json of an exported folder through `edit`.
template <typename Edit>
void edit_config(const QString& dir, Edit edit)
{
    QJsonObject o = QJsonDocument::fromJson(QByteArray::fromStdString(read_bytes(dir + "/config.json"))).object();
    edit(o);
    write_bytes(dir + "/config.json", QJsonDocument(o).toJson().toStdString());
}

QString export_stories(const QTemporaryDir& tmp, const QString& name = "hf")
{
    const QString dir = tmp.filePath(name);
    save_hf(stories260k(), dir.toStdString(), {false, tok512_path()});
    return dir;
}

} // namespace

class TestHfLoader : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void roundTripKeepsEveryTensorAndLogits()
    {
        QTemporaryDir tmp;
        const QString dir = export_stories(tmp);
        QVERIFY(QFileInfo::exists(dir + "/config.json"));
        QVERIFY(QFileInfo::exists(dir + "/tokenizer.model"));
        const Model back = load_hf(dir.toStdString());
        QCOMPARE(back.format, ModelFormat::HuggingFace);
        QCOMPARE(back.file_dtype, std::string("f32"));
        QVERIFY(back.config.tied_embeddings);
        QCOMPARE(back.config.n_kv_heads, 4);
        for (const NamedTensor& t : stories260k().named_tensors()) {
            bool found = false;
            for (const NamedTensor& u : back.named_tensors())
                if (u.name == t.name) {
                    QVERIFY2(at::equal(t.tensor, u.tensor), t.name.c_str());
                    found = true;
                }
            QVERIFY2(found, t.name.c_str());
        }
        const at::Tensor ids = at::randint(512, {2, 64}, at::kLong);
        QCOMPARE(max_abs_diff(forward(stories260k(), ids), forward(back, ids)), 0.0);
    }

    void readsSafetensorsHeaderAsWritten()
    {
        // An independent read of the container: header length, JSON, offsets, raw bytes.
        QTemporaryDir tmp;
        const QString path = tmp.filePath("x.safetensors");
        const at::Tensor a = at::arange(6, at::kFloat).view({2, 3});
        const at::Tensor b = at::tensor({1.5, -2.0}).to(at::kHalf);
        write_safetensors(path.toStdString(), {{"a", a}, {"b", b}}, {{"format", "pt"}});
        const std::string bytes = read_bytes(path);
        std::uint64_t n;
        std::memcpy(&n, bytes.data(), 8);
        QCOMPARE(n % 8, std::uint64_t(0));
        const QJsonObject header = QJsonDocument::fromJson(QByteArray::fromStdString(bytes.substr(8, n))).object();
        QCOMPARE(header["a"].toObject()["dtype"].toString(), QString("F32"));
        QCOMPARE(header["b"].toObject()["dtype"].toString(), QString("F16"));
        QCOMPARE(header["__metadata__"].toObject()["format"].toString(), QString("pt"));
        const auto off = header["a"].toObject()["data_offsets"].toArray();
        float f5;
        std::memcpy(&f5, bytes.data() + 8 + n + off[0].toInteger() + 5 * 4, 4);
        QCOMPARE(f5, 5.0f);
        const SafetensorsFile file(path.toStdString());
        QVERIFY(at::equal(file.read("b"), b));
    }

    void hugeNumbersInTheHeaderAreRefused_data()
    {
        QTest::addColumn<QString>("entry");
        QTest::addColumn<QString>("message");
        // Found by fuzz_hf (tests/fuzz/regressions/hf/data-offset-5e84): converting 5e84 to an
        // int64 was undefined behaviour.
        QTest::newRow("offset 5e84") << R"({"dtype":"F32","shape":[1],"data_offsets":[0,5e84]})" << "no valid [begin, end] data_offsets";
        QTest::newRow("negative offset") << R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})" << "no valid [begin, end] data_offsets";
        QTest::newRow("dimension 1e300") << R"({"dtype":"F32","shape":[1e300],"data_offsets":[0,4]})" << "invalid shape";
        QTest::newRow("fractional dimension") << R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,4]})" << "invalid shape";
    }

    void hugeNumbersInTheHeaderAreRefused()
    {
        QFETCH(QString, entry);
        QFETCH(QString, message);
        QTemporaryDir dir;
        const QString path = dir.filePath("h.safetensors");
        std::string header = "{\"a\":" + entry.toStdString() + "}";
        header.resize((header.size() + 7) / 8 * 8, ' ');
        std::string bytes(8, '\0');
        const std::uint64_t n = header.size();
        std::memcpy(bytes.data(), &n, 8);
        bytes += header + std::string(4, '\0');
        write_bytes(path, bytes);
        try {
            SafetensorsFile file(path.toStdString());
            QFAIL("accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains(message), e.what());
        }
    }

    void halfAndBfloatStorage_data()
    {
        QTest::addColumn<int>("dtype");
        QTest::addColumn<QString>("name");
        QTest::newRow("f16") << static_cast<int>(at::kHalf) << "f16";
        QTest::newRow("bf16") << static_cast<int>(at::kBFloat16) << "bf16";
    }

    void halfAndBfloatStorage()
    {
        QFETCH(int, dtype);
        QFETCH(QString, name);
        Model m = stories260k();
        m.file_dtype = name.toStdString(); // save_hf stores the model's file dtype
        QTemporaryDir tmp;
        save_hf(m, tmp.path().toStdString(), {true, {}});
        // The loader keeps the file's precision (mapped); load_model converts it for the CPU engine.
        const Model back = load_hf(tmp.path().toStdString());
        QCOMPARE(QString::fromStdString(back.file_dtype), name);
        const at::Tensor expected = stories260k().tok_embeddings.to(static_cast<at::ScalarType>(dtype));
        QVERIFY(back.tok_embeddings.scalar_type() == expected.scalar_type());
        QVERIFY(at::equal(back.tok_embeddings, expected));
        const Model f32 = load_model(tmp.path().toStdString());
        QVERIFY(f32.tok_embeddings.scalar_type() == at::kFloat); // the CPU engine computes in float32
        QVERIFY(at::equal(f32.tok_embeddings, expected.to(at::kFloat)));
    }

    void shardedCheckpointWithIndex()
    {
        QTemporaryDir tmp;
        const std::vector<NamedTensor> all = stories260k().named_tensors();
        const std::size_t half = all.size() / 2;
        const std::vector<NamedTensor> first(all.begin(), all.begin() + half), second(all.begin() + half, all.end());
        write_safetensors(tmp.filePath("model-00001-of-00002.safetensors").toStdString(), first);
        write_safetensors(tmp.filePath("model-00002-of-00002.safetensors").toStdString(), second);
        QJsonObject map;
        for (std::size_t i = 0; i < all.size(); ++i)
            map[QString::fromStdString(all[i].name)] =
                i < half ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
        write_bytes(tmp.filePath("model.safetensors.index.json"),
                    QJsonDocument(QJsonObject{{"weight_map", map}}).toJson().toStdString());
        QTemporaryDir cfg;
        save_hf(stories260k(), cfg.path().toStdString(), {true, {}});
        QFile::copy(cfg.filePath("config.json"), tmp.filePath("config.json"));
        const Model back = load_hf(tmp.path().toStdString());
        QVERIFY(at::equal(back.layers[4].weight(LinearKind::Down), stories260k().layers[4].weight(LinearKind::Down)));
        QVERIFY(at::equal(back.tok_embeddings, stories260k().tok_embeddings));
    }

    void untiedHeadAndGroupedQuery()
    {
        ModelConfig c;
        c.dim = 32; c.hidden_dim = 48; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2; c.vocab_size = 40;
        c.max_seq_len = 16;
        const Model m = make_synthetic_model(c, 7);
        QTemporaryDir tmp;
        save_hf(m, tmp.path().toStdString(), {true, {}});
        const Model back = load_hf(tmp.filePath("model.safetensors").toStdString());
        QVERIFY(!back.config.tied_embeddings);
        QVERIFY(at::equal(back.output, m.output));
        const at::Tensor ids = at::randint(40, {1, 16}, at::kLong);
        QCOMPARE(max_abs_diff(forward(m, ids), forward(back, ids)), 0.0);
    }

    void familiesRoundTripThroughConfigJson_data()
    {
        QTest::addColumn<QString>("shape");
        QTest::newRow("llama-3.2-1b (llama3 RoPE scaling, tied, GQA)") << "llama-3.2-1b";
        QTest::newRow("llama-3.1-8b (untied)") << "llama-3.1-8b";
        QTest::newRow("mistral-7b (sliding window)") << "mistral-7b";
        QTest::newRow("smollm-135m (tied, GQA 9/3)") << "smollm-135m";
        QTest::newRow("qwen2.5-0.5b (q/k/v biases, tied, GQA 14/2)") << "qwen2.5-0.5b";
        QTest::newRow("qwen3-0.6b (q/k norms, head_dim from the config)") << "qwen3-0.6b";
        QTest::newRow("qwen3-8b (untied, head_dim 128 = hidden / heads: not written back)") << "qwen3-8b";
    }
    void familiesRoundTripThroughConfigJson()
    {
        // The shapes' configs, shrunk to a few KB of weights, through save_hf and load_hf.
        QFETCH(QString, shape);
        ModelConfig c = synthetic_shape(shape.toStdString());
        c.dim = c.n_heads * 4; c.hidden_dim = 16; c.n_layers = 1; c.vocab_size = 24;
        if (c.explicit_head_dim > 0)
            c.explicit_head_dim = 6; // still not dim / n_heads (4)
        Model m = make_synthetic_model(c, 5);
        if (c.qk_norm()) { // values a loader could not guess
            m.layers[0].q_norm = at::linspace(0.5, 1.5, c.head_dim());
            m.layers[0].k_norm = at::linspace(1.5, 0.5, c.head_dim());
        }
        QTemporaryDir tmp;
        save_hf(m, tmp.path().toStdString());
        const QJsonObject written =
            QJsonDocument::fromJson(QByteArray::fromStdString(read_bytes(tmp.filePath("config.json")))).object();
        QCOMPARE(written["model_type"].toString(), QString::fromStdString(c.arch));
        const Model back = load_hf(tmp.path().toStdString());
        const ModelConfig& b = back.config;
        QCOMPARE(b.arch, c.arch);
        QCOMPARE(b.rope_theta, c.rope_theta);
        QCOMPARE(static_cast<int>(b.rope_scaling.type), static_cast<int>(c.rope_scaling.type));
        QCOMPARE(b.rope_scaling.factor, c.rope_scaling.factor);
        QCOMPARE(b.rope_scaling.original_max_position, c.rope_scaling.original_max_position);
        QCOMPARE(b.sliding_window, c.sliding_window);
        QCOMPARE(b.tied_embeddings, c.tied_embeddings);
        QCOMPARE(b.n_kv_heads, c.n_kv_heads);
        QCOMPARE(b.head_dim(), c.head_dim());
        QCOMPARE(written.contains("head_dim"), c.explicit_head_dim > 0);
        QCOMPARE(b.to_json(), c.to_json()); // the packed format's copy of the config, too
        QCOMPARE(ModelConfig::from_json(c.to_json(), "packed").to_json(), c.to_json());
        if (c.rope_scaling.type == RopeScaling::Type::Llama3) {
            QCOMPARE(written["rope_scaling"].toObject()["rope_type"].toString(), QString("llama3"));
            QCOMPARE(written["rope_scaling"].toObject()["original_max_position_embeddings"].toInt(), 8192);
        }
        const at::Tensor ids = at::randint(24, {1, 12}, at::kLong);
        QCOMPARE(max_abs_diff(forward(m, ids), forward(back, ids)), 0.0);
        if (c.qkv_bias()) {
            QVERIFY(at::equal(back.layers[0].bias_of(LinearKind::V), m.layers[0].bias_of(LinearKind::V)));
            QCOMPARE(m.named_tensors().size(), std::size_t(1 + 12 + 1)); // embedding; 2 norms, 7 Linears, 3 biases; final norm
        }
        if (c.qk_norm()) {
            QVERIFY(at::equal(back.layers[0].k_norm, m.layers[0].k_norm));
            QCOMPARE(back.layers[0].weight(LinearKind::Q).size(0), std::int64_t{c.n_heads} * c.head_dim());
            QCOMPARE(back.layers[0].weight(LinearKind::O).size(1), std::int64_t{c.n_heads} * c.head_dim());
        }
        // llama2.c has no field for any of this: converting there is refused, not silently wrong.
        if (shape != "smollm-135m")
            QVERIFY_THROWS_EXCEPTION(Error, save_llama2c_v1(m, tmp.filePath("x.bin").toStdString()));
    }

    void configsWithoutNewKeysStayLlama()
    {
        // Packed files written before families existed hold no "arch", "rope_scaling" or "sliding_window".
        const ModelConfig c = ModelConfig::from_json(
            "{\"dim\":64,\"hidden_dim\":172,\"n_layers\":5,\"n_heads\":8,\"n_kv_heads\":4,\"vocab_size\":512,"
            "\"max_seq_len\":512,\"norm_eps\":1e-5,\"rope_theta\":10000,\"tied_embeddings\":true}",
            "old file");
        QCOMPARE(c.arch, std::string("llama"));
        QVERIFY(c.rope_scaling.type == RopeScaling::Type::None);
        QCOMPARE(c.sliding_window, 0);
        QCOMPARE(c.usable_context(), 512);
    }

    void rejectsBadInput_data()
    {
        QTest::addColumn<QString>("breakage");
        QTest::addColumn<QString>("expected");
        QTest::newRow("missing tensor") << "missing-tensor" << "tensor 'model.layers.2.mlp.up_proj.weight' is missing";
        QTest::newRow("shape mismatch") << "shape" << "has shape (172, 64), expected (180, 64)";
        QTest::newRow("missing config") << "no-config" << "config.json: missing";
        QTest::newRow("config not JSON") << "config-garbage" << "not a JSON object";
        QTest::newRow("config missing key") << "config-key" << "required key 'hidden_size' is missing";
        QTest::newRow("unknown family") << "model-type" << "model_type 'gpt2' is not supported (supported: llama, mistral, qwen2, qwen3)";
        QTest::newRow("family needing more") << "gemma" << "model_type 'gemma' is not supported: it needs embeddings scaled by sqrt(hidden_size)";
        QTest::newRow("qwen3 without q/k norms") << "qwen3" << "tensor 'model.layers.0.self_attn.q_norm.weight' is missing";
        QTest::newRow("head_dim against the tensors") << "head-dim" << "q_proj.weight' has shape (64, 64), expected (128, 64)";
        QTest::newRow("head_dim out of range") << "head-dim-negative" << "head_dim -3 is outside [1, 1024]";
        QTest::newRow("head_dim odd") << "head-dim-odd" << "head dimension 7 is odd";
        QTest::newRow("qwen2 without biases") << "qwen2" << "tensor 'model.layers.0.self_attn.q_proj.bias' is missing";
        QTest::newRow("rope scaling type") << "yarn" << "rope_scaling type 'yarn' is not supported (linear and llama3 are)";
        QTest::newRow("rope scaling factor") << "no-factor" << "rope_scaling.factor is missing";
        QTest::newRow("llama3 scaling without context") << "llama3-bad" << "llama3 rope_scaling needs";
        QTest::newRow("header length beyond file") << "header-length" << "exceeds the file size";
        QTest::newRow("header not JSON") << "header-garbage" << "header is not a JSON object";
        QTest::newRow("truncated data") << "truncated" << "file truncated?";
        QTest::newRow("unsupported dtype") << "dtype" << "has unknown dtype 'Q4'";
        QTest::newRow("NaN weight") << "nan" << "tensor 'model.norm.weight' contains 1 NaN/Inf value(s)";
        QTest::newRow("untied without head") << "untied" << "'lm_head.weight' is missing";
        QTest::newRow("index names missing shard") << "index" << "shard 'nowhere.safetensors'";
    }

    void rejectsBadInput()
    {
        QFETCH(QString, breakage);
        QFETCH(QString, expected);
        QTemporaryDir tmp;
        const QString dir = export_stories(tmp);
        const QString st = dir + "/model.safetensors";
        std::vector<NamedTensor> tensors = stories260k().named_tensors();
        auto rewrite = [&](auto edit) {
            edit(tensors);
            write_safetensors(st.toStdString(), tensors);
        };
        auto patch_header = [&](const QByteArray& from, const QByteArray& to) {
            std::string b = read_bytes(st);
            const auto pos = b.find(from.toStdString());
            QVERIFY(pos != std::string::npos);
            b.replace(pos, from.size(), to.toStdString());
            write_bytes(st, b);
        };
        if (breakage == "missing-tensor") {
            rewrite([](auto& t) {
                t.erase(std::remove_if(t.begin(), t.end(), [](const NamedTensor& n) {
                    return n.name == "model.layers.2.mlp.up_proj.weight";
                }), t.end());
            });
        } else if (breakage == "shape") {
            edit_config(dir, [](QJsonObject& o) { o["intermediate_size"] = 180; });
        } else if (breakage == "no-config") {
            QFile::remove(dir + "/config.json");
        } else if (breakage == "config-garbage") {
            write_bytes(dir + "/config.json", "{not json");
        } else if (breakage == "config-key") {
            edit_config(dir, [](QJsonObject& o) { o.remove("hidden_size"); });
        } else if (breakage == "model-type") {
            edit_config(dir, [](QJsonObject& o) { o["model_type"] = "gpt2"; });
        } else if (breakage == "qwen2") {
            edit_config(dir, [](QJsonObject& o) { o["model_type"] = "qwen2"; });
        } else if (breakage == "qwen3") {
            edit_config(dir, [](QJsonObject& o) { o["model_type"] = "qwen3"; });
        } else if (breakage == "gemma") {
            edit_config(dir, [](QJsonObject& o) { o["model_type"] = "gemma"; });
        } else if (breakage == "head-dim") {
            edit_config(dir, [](QJsonObject& o) { o["head_dim"] = 16; });
        } else if (breakage == "head-dim-negative") {
            edit_config(dir, [](QJsonObject& o) { o["head_dim"] = -3; });
        } else if (breakage == "head-dim-odd") {
            edit_config(dir, [](QJsonObject& o) { o["head_dim"] = 7; });
        } else if (breakage == "yarn") {
            edit_config(dir, [](QJsonObject& o) { o["rope_scaling"] = QJsonObject{{"rope_type", "yarn"}, {"factor", 4}}; });
        } else if (breakage == "no-factor") {
            edit_config(dir, [](QJsonObject& o) { o["rope_scaling"] = QJsonObject{{"type", "linear"}}; });
        } else if (breakage == "llama3-bad") {
            edit_config(dir, [](QJsonObject& o) { o["rope_scaling"] = QJsonObject{{"rope_type", "llama3"}, {"factor", 8}}; });
        } else if (breakage == "header-length") {
            std::string b = read_bytes(st);
            const std::uint64_t huge = 1ull << 40;
            std::memcpy(b.data(), &huge, 8);
            write_bytes(st, b);
        } else if (breakage == "header-garbage") {
            std::string b = read_bytes(st);
            b[8] = '[';
            write_bytes(st, b);
        } else if (breakage == "truncated") {
            const std::string b = read_bytes(st);
            write_bytes(st, b.substr(0, b.size() - 1000));
        } else if (breakage == "dtype") {
            patch_header("\"F32\"", "\"Q4\" ");
        } else if (breakage == "nan") {
            rewrite([](auto& t) {
                for (NamedTensor& n : t)
                    if (n.name == "model.norm.weight") {
                        n.tensor = n.tensor.clone();
                        n.tensor[3] = std::numeric_limits<float>::quiet_NaN();
                    }
            });
        } else if (breakage == "untied") {
            edit_config(dir, [](QJsonObject& o) { o["tie_word_embeddings"] = false; });
        } else if (breakage == "index") {
            QFile::remove(st);
            write_bytes(dir + "/model.safetensors.index.json",
                        R"({"weight_map": {"model.norm.weight": "nowhere.safetensors"}})");
        }
        try {
            load_hf(dir.toStdString());
            QFAIL("bad input was accepted");
        } catch (const Error& e) {
            QVERIFY2(QString::fromUtf8(e.what()).contains(expected), e.what());
            QVERIFY2(QString::fromUtf8(e.what()).contains(QFileInfo(dir).fileName()), e.what());
        }
    }
};

QTEST_GUILESS_MAIN(TestHfLoader)
#include "tst_hf_loader.moc"
