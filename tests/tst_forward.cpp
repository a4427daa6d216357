// The three forward paths must agree: batched libtorch forward (perplexity, calibration), the
// plain-loop CPU decoder and the libtorch KV-cache decoder (the CUDA path, run here on CPU).
#include "core/decoder.h"
#include "core/error.h"
#include "core/hf_model.h"
#include "core/llama.h"
#include "core/model_io.h"
#include "core/synthetic.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <QTemporaryDir>
#include <QtTest>

#include <cstring>

using namespace pbllm;
using namespace pbllm::test;

namespace {

/// Logits of every position from step-by-step decoding, (T, vocab).
at::Tensor decode_all(const Model& m, const at::Tensor& ids, DecoderBackend backend)
{
    auto dec = make_decoder(m, backend);
    at::Tensor out = at::empty({ids.size(0), m.config.vocab_size});
    for (std::int64_t t = 0; t < ids.size(0); ++t) {
        const float* logits = dec->step(static_cast<int>(ids[t].item<std::int64_t>()));
        std::memcpy(out[t].data_ptr<float>(), logits, sizeof(float) * m.config.vocab_size);
    }
    return out;
}

} // namespace

class TestForward : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void decodersAgreeWithBatchedForward_data()
    {
        QTest::addColumn<bool>("synthetic");
        QTest::newRow("stories260K (GQA, tied)") << false;
        QTest::newRow("synthetic (MHA, untied)") << true;
    }

    void decodersAgreeWithBatchedForward()
    {
        QFETCH(bool, synthetic);
        ModelConfig c;
        c.dim = 48; c.hidden_dim = 96; c.n_layers = 3; c.n_heads = 6; c.n_kv_heads = 6; c.vocab_size = 100;
        c.max_seq_len = 128;
        const Model m = synthetic ? make_synthetic_model(c, 3) : stories260k();
        const int T = 96;
        const at::Tensor ids = at::randint(m.config.vocab_size, {T}, at::kLong);
        const at::Tensor full = forward(m, ids.view({1, T}))[0];
        const at::Tensor cpu = decode_all(m, ids, DecoderBackend::Cpu);
        const at::Tensor torch = decode_all(m, ids, DecoderBackend::Torch);
        const double scale = full.abs().max().item<double>();
        QVERIFY2(max_abs_diff(full, cpu) < 1e-4 * std::max(1.0, scale), qPrintable(QString::number(max_abs_diff(full, cpu))));
        QVERIFY2(max_abs_diff(full, torch) < 1e-4 * std::max(1.0, scale), qPrintable(QString::number(max_abs_diff(full, torch))));
    }

    void mappedHalfWeightsGiveTheFloat32Logits_data()
    {
        QTest::addColumn<int>("dtype");
        QTest::newRow("f16") << static_cast<int>(at::kHalf);
        QTest::newRow("bf16") << static_cast<int>(at::kBFloat16);
    }

    // A model kept as mapped F16/BF16 (converted a layer at a time in the batched forward, inside
    // the matvec kernel in the decoder) computes exactly what its float32 conversion computes.
    void mappedHalfWeightsGiveTheFloat32Logits()
    {
        QFETCH(int, dtype);
        const auto type = static_cast<at::ScalarType>(dtype);
        QTemporaryDir tmp;
        Model half = stories260k();
        half.file_dtype = type == at::kHalf ? "f16" : "bf16";
        save_hf(half, tmp.path().toStdString());
        LoadOptions options;
        options.storage = WeightStorage::Mapped;
        const Model mapped = load_model(tmp.path().toStdString(), options);
        QVERIFY(mapped.layers[0].weight(LinearKind::Q).scalar_type() == type);
        QVERIFY(mapped.tok_embeddings.scalar_type() == type);
        const Model f32 = load_model(tmp.path().toStdString());
        QVERIFY(f32.layers[0].weight(LinearKind::Q).scalar_type() == at::kFloat);

        const at::Tensor ids = at::randint(512, {2, 64}, at::kLong);
        QCOMPARE(max_abs_diff(forward(mapped, ids), forward(f32, ids)), 0.0);
        // Held in (huge-page) memory instead of the mapping: same dtype and values, its own storage.
        const Model resident = resident_copy(mapped);
        QVERIFY(resident.layers[4].weight(LinearKind::Down).scalar_type() == type);
        QVERIFY(resident.layers[4].weight(LinearKind::Down).data_ptr() != mapped.layers[4].weight(LinearKind::Down).data_ptr());
        QVERIFY(at::equal(resident.layers[4].weight(LinearKind::Down), mapped.layers[4].weight(LinearKind::Down)));
        QVERIFY(at::equal(resident.output, mapped.output));
        QCOMPARE(max_abs_diff(decode_all(resident, ids[1], DecoderBackend::Auto), decode_all(f32, ids[1], DecoderBackend::Cpu)),
                 0.0);
        // Auto must pick the plain-loop decoder (libtorch has no half matmul on the CPU).
        QCOMPARE(max_abs_diff(decode_all(mapped, ids[0], DecoderBackend::Auto), decode_all(f32, ids[0], DecoderBackend::Cpu)),
                 0.0);
    }

    void batchRowsAreIndependent()
    {
        const Model& m = stories260k();
        const at::Tensor a = at::randint(512, {1, 40}, at::kLong), b = at::randint(512, {1, 40}, at::kLong);
        const at::Tensor both = forward(m, at::cat({a, b}, 0));
        // Equal up to float32 rounding (BLAS may block a batched GEMM differently).
        QVERIFY2(max_abs_diff(both[0], forward(m, a)[0]) < 1e-4, qPrintable(QString::number(max_abs_diff(both[0], forward(m, a)[0]))));
        QVERIFY2(max_abs_diff(both[1], forward(m, b)[0]) < 1e-4, qPrintable(QString::number(max_abs_diff(both[1], forward(m, b)[0]))));
    }

    void causality()
    {
        // Changing a later token never changes earlier logits.
        const Model& m = stories260k();
        at::Tensor ids = at::randint(512, {1, 30}, at::kLong);
        const at::Tensor before = forward(m, ids);
        ids[0][20] = (ids[0][20].item<std::int64_t>() + 1) % 512;
        const at::Tensor after = forward(m, ids);
        QCOMPARE(max_abs_diff(before.narrow(1, 0, 20), after.narrow(1, 0, 20)), 0.0);
        QVERIFY(max_abs_diff(before.narrow(1, 20, 10), after.narrow(1, 20, 10)) > 1e-3);
    }

    void rmsNormMatchesDefinition()
    {
        const at::Tensor x = at::randn({3, 16}), w = at::randn({16});
        const at::Tensor expected = x / at::sqrt((x * x).mean(-1, true) + 1e-5) * w;
        QVERIFY(max_abs_diff(rms_norm(x, w, 1e-5f), expected) < 1e-5);
    }

    void decoderLimitsAndBadTokens()
    {
        const Model& m = stories260k();
        auto dec = make_decoder(m, DecoderBackend::Cpu, 3);
        dec->step(1);
        dec->step(2);
        dec->step(3);
        try {
            dec->step(4);
            QFAIL("stepped past the context");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("context length of 3 tokens reached"), e.what());
        }
        auto fresh = make_decoder(m);
        QVERIFY_THROWS_EXCEPTION(Error, fresh->step(512));
        QVERIFY_THROWS_EXCEPTION(Error, forward(m, at::full({1, 2}, 600, at::kLong)));
    }
};

QTEST_GUILESS_MAIN(TestForward)
#include "tst_forward.moc"
