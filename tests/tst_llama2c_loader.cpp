// llama2.c checkpoints: the real stories260K file read against independent raw-byte reads, the
// version 1 round trip, the untied-classifier variant, and every malformed-file case by name.
#include "core/error.h"
#include "core/llama2c.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <QTemporaryDir>
#include <QtTest>

#include <cstring>

using namespace pbllm;
using namespace pbllm::test;

namespace {

float raw_float(const std::string& bytes, std::int64_t float_index)
{
    float v;
    std::memcpy(&v, bytes.data() + 28 + float_index * 4, 4);
    return v;
}

void put_i32(std::string& bytes, std::size_t offset, std::int32_t v) { std::memcpy(bytes.data() + offset, &v, 4); }
void put_f32(std::string& bytes, std::size_t offset, float v) { std::memcpy(bytes.data() + offset, &v, 4); }

} // namespace

class TestLlama2cLoader : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void readsStories260kHeader()
    {
        const Model& m = stories260k();
        const ModelConfig& c = m.config;
        QCOMPARE(c.dim, 64);
        QCOMPARE(c.hidden_dim, 172);
        QCOMPARE(c.n_layers, 5);
        QCOMPARE(c.n_heads, 8);
        QCOMPARE(c.n_kv_heads, 4);
        QCOMPARE(c.vocab_size, 512);
        QCOMPARE(c.max_seq_len, 512);
        QVERIFY(c.tied_embeddings);
        QCOMPARE(m.format, ModelFormat::Llama2cV0);
        // SOURCES.md: 260,032 weight parameters besides the RoPE tables.
        QCOMPARE(c.parameter_count(), std::int64_t(260032));
        QCOMPARE(m.file_bytes, llama2c_v0_file_size(c, true));
        QCOMPARE(m.file_bytes, std::int64_t(1056540));
    }

    void tensorsMatchRawBytes()
    {
        const std::string raw = read_bytes(QString::fromStdString(stories260k_path()));
        const Model& m = stories260k();
        // Token embedding is the first tensor after the 28-byte header.
        QCOMPARE(m.tok_embeddings[3][5].item<float>(), raw_float(raw, 3 * 64 + 5));
        // Layer 0's wq follows the embedding (512x64) and rms_att (5x64). The file stores RoPE
        // pairs interleaved (2j, 2j+1); in memory row h*8 + j is file row h*8 + 2j and row
        // h*8 + 4 + j is file row h*8 + 2j + 1.
        const std::int64_t wq0 = 512 * 64 + 5 * 64;
        const at::Tensor q = m.layers[0].weight(LinearKind::Q);
        for (int h : {0, 7})
            for (int j = 0; j < 4; ++j)
                for (int col : {0, 63}) {
                    QCOMPARE(q[h * 8 + j][col].item<float>(), raw_float(raw, wq0 + (h * 8 + 2 * j) * 64 + col));
                    QCOMPARE(q[h * 8 + 4 + j][col].item<float>(), raw_float(raw, wq0 + (h * 8 + 2 * j + 1) * 64 + col));
                }
        // Tied classifier shares the embedding.
        QVERIFY(m.output.is_same(m.tok_embeddings));
    }

    void version1RoundTrip()
    {
        QTemporaryDir dir;
        const std::string path = dir.filePath("v1.bin").toStdString();
        save_llama2c_v1(stories260k(), path);
        const std::string bytes = read_bytes(QString::fromStdString(path));
        QCOMPARE(bytes.substr(0, 4), std::string("24ka")); // uint32 0x616b3432, little-endian
        QCOMPARE(static_cast<std::int64_t>(bytes.size()), 256 + 4 * stories260k().config.parameter_count());
        const Model back = load_llama2c(path);
        QCOMPARE(back.format, ModelFormat::Llama2cV1);
        QVERIFY(back.config.tied_embeddings);
        const auto a = stories260k().named_tensors(), b = back.named_tensors();
        QCOMPARE(a.size(), b.size());
        for (std::size_t i = 0; i < a.size(); ++i) {
            QCOMPARE(a[i].name, b[i].name);
            QVERIFY2(at::equal(a[i].tensor, b[i].tensor), a[i].name.c_str());
        }
    }

    void legacyUntiedClassifier()
    {
        // A negative vocab_size in a version 0 header means a separate classifier follows.
        std::string bytes = read_bytes(QString::fromStdString(stories260k_path()));
        put_i32(bytes, 20, -512);
        std::string head(512 * 64 * 4, '\0');
        for (int i = 0; i < 512 * 64; ++i)
            put_f32(head, i * 4, 0.001f * (i % 97));
        bytes += head;
        QTemporaryDir dir;
        write_bytes(dir.filePath("untied.bin"), bytes);
        const Model m = load_llama2c(dir.filePath("untied.bin").toStdString());
        QVERIFY(!m.config.tied_embeddings);
        QCOMPARE(m.output[1][3].item<float>(), 0.001f * ((64 + 3) % 97));
        QVERIFY(at::equal(m.tok_embeddings, stories260k().tok_embeddings));
    }

    void rejectsBadFiles_data()
    {
        QTest::addColumn<QByteArray>("content");
        QTest::addColumn<QString>("expected");
        const std::string good = read_bytes(QString::fromStdString(stories260k_path()));
        auto with = [&](auto edit) {
            std::string b = good;
            edit(b);
            return QByteArray::fromStdString(b);
        };
        QTest::newRow("empty") << QByteArray() << "file is truncated: the llama2.c header needs 28 bytes";
        QTest::newRow("truncated data") << QByteArray::fromStdString(good.substr(0, 100000)) << "file is truncated";
        QTest::newRow("trailing bytes") << with([](std::string& b) { b += std::string(16, '\0'); })
                                        << "unexpected trailing bytes";
        QTest::newRow("version 2 magic") << with([](std::string& b) {
            put_i32(b, 0, 0x616b3432);
            put_i32(b, 4, 2);
        }) << "version 2 is not supported";
        QTest::newRow("dim not divisible by heads") << with([](std::string& b) { put_i32(b, 0, 65); })
                                                    << "dim 65 is not divisible by n_heads 8";
        QTest::newRow("kv heads do not divide heads") << with([](std::string& b) { put_i32(b, 16, 3); })
                                                      << "n_heads 8 is not a multiple of n_kv_heads 3";
        QTest::newRow("negative layer count") << with([](std::string& b) { put_i32(b, 8, -1); })
                                              << "n_layers = -1 (must be positive)";
        QTest::newRow("garbage header") << with([](std::string& b) { put_i32(b, 0, 1 << 30); })
                                        << "implausibly large";
        // Found by fuzz_llama2c (tests/fuzz/regressions/llama2c/v0-vocab-int-min.bin): negating
        // INT_MIN for the legacy untied-classifier flag was undefined behaviour.
        QTest::newRow("vocab_size INT_MIN") << with([](std::string& b) { put_i32(b, 20, std::numeric_limits<std::int32_t>::min()); })
                                            << "vocab_size = 0 (must be positive)";
        QTest::newRow("layer count mismatch") << with([](std::string& b) { put_i32(b, 8, 6); }) << "truncated";
        QTest::newRow("NaN in wq") << with([](std::string& b) {
            put_f32(b, 28 + (512 * 64 + 5 * 64 + 10) * 4, std::numeric_limits<float>::quiet_NaN());
        }) << "tensor 'model.layers.0.self_attn.q_proj.weight' contains 1 NaN/Inf value(s)";
        QTest::newRow("Inf in embedding") << with([](std::string& b) {
            put_f32(b, 28 + 7 * 4, std::numeric_limits<float>::infinity());
        }) << "tensor 'model.embed_tokens.weight' contains 1 NaN/Inf value(s), the first at flat index 7";
    }

    void rejectsBadFiles()
    {
        QFETCH(QByteArray, content);
        QFETCH(QString, expected);
        QTemporaryDir dir;
        const QString path = dir.filePath("bad.bin");
        write_bytes(path, content.toStdString());
        try {
            load_llama2c(path.toStdString());
            QFAIL("a malformed checkpoint was accepted");
        } catch (const Error& e) {
            const QString message = QString::fromUtf8(e.what());
            QVERIFY2(message.contains(expected), qPrintable(message));
            QVERIFY2(message.startsWith(path), qPrintable("message does not name the file: " + message));
        }
    }

    void rejectsMissingFileAndFolder()
    {
        QTemporaryDir dir;
        QVERIFY_THROWS_EXCEPTION(Error, load_llama2c(dir.filePath("absent.bin").toStdString()));
        try {
            load_llama2c(dir.path().toStdString());
            QFAIL("a folder was accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("not a regular file"), e.what());
        }
    }
};

QTEST_GUILESS_MAIN(TestLlama2cLoader)
#include "tst_llama2c_loader.moc"
