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

#include <cmath>
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

/// RoPE inverse frequencies in float64 from the formulas (Llama 3.1's "llama3" scaling written out
/// again here, independently of core/llama.cpp).
std::vector<double> reference_inverse_frequencies(const ModelConfig& c)
{
    const int hd = c.head_dim();
    std::vector<double> f(static_cast<std::size_t>(hd / 2));
    for (int i = 0; i < hd / 2; ++i) {
        double inv = std::pow(static_cast<double>(c.rope_theta), -2.0 * i / hd);
        const RopeScaling& r = c.rope_scaling;
        if (r.type == RopeScaling::Type::Linear) {
            inv /= r.factor;
        } else if (r.type == RopeScaling::Type::Llama3) {
            const double wavelen = 2.0 * M_PI / inv;
            const double low = r.original_max_position / r.low_freq_factor;
            const double high = r.original_max_position / r.high_freq_factor;
            if (wavelen > low) {
                inv /= r.factor;
            } else if (wavelen >= high) {
                const double s = (r.original_max_position / wavelen - r.low_freq_factor) /
                                 (r.high_freq_factor - r.low_freq_factor);
                inv = (1.0 - s) * inv / r.factor + s * inv;
            }
        }
        f[static_cast<std::size_t>(i)] = inv;
    }
    return f;
}

/// The Llama forward pass for one sequence in plain loops and float64 (T, vocab): a reference
/// written for the test, sharing no code with the libtorch or decoder paths.
at::Tensor reference_logits(const Model& m, const std::vector<int>& ids)
{
    const ModelConfig& c = m.config;
    const int D = c.dim, H = c.n_heads, KV = c.n_kv_heads, hd = c.head_dim(), F = c.hidden_dim, T = static_cast<int>(ids.size());
    using Vec = std::vector<double>;
    auto at2 = [](const at::Tensor& t) { return t.to(at::kDouble).contiguous(); };
    auto matvec = [](const at::Tensor& w, const Vec& x) { // w (out, in) float64
        const double* p = w.data_ptr<double>();
        const std::int64_t rows = w.size(0), cols = w.size(1);
        Vec y(static_cast<std::size_t>(rows), 0.0);
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t k = 0; k < cols; ++k)
                y[r] += p[r * cols + k] * x[k];
        return y;
    };
    auto rmsnorm = [&](const Vec& x, const at::Tensor& w) {
        double ss = 0.0;
        for (double v : x)
            ss += v * v;
        const double scale = 1.0 / std::sqrt(ss / x.size() + c.norm_eps);
        const double* g = w.data_ptr<double>();
        Vec y(x.size());
        for (std::size_t i = 0; i < x.size(); ++i)
            y[i] = x[i] * scale * g[i];
        return y;
    };
    const std::vector<double> inv = reference_inverse_frequencies(c);
    auto rope = [&](Vec& v, int heads, int pos) { // rotate-half pairs (i, i + hd/2)
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < hd / 2; ++i) {
                const double a = pos * inv[i], x1 = v[h * hd + i], x2 = v[h * hd + i + hd / 2];
                v[h * hd + i] = x1 * std::cos(a) - x2 * std::sin(a);
                v[h * hd + i + hd / 2] = x1 * std::sin(a) + x2 * std::cos(a);
            }
    };
    const at::Tensor emb = at2(m.tok_embeddings), head = at2(m.output), final_norm = at2(m.final_norm);
    std::vector<Vec> x(T);
    for (int t = 0; t < T; ++t)
        x[t] = Vec(emb[ids[t]].data_ptr<double>(), emb[ids[t]].data_ptr<double>() + D);
    for (const DecoderLayer& layer : m.layers) {
        const at::Tensor wq = at2(layer.weight(LinearKind::Q)), wk = at2(layer.weight(LinearKind::K)),
                         wv = at2(layer.weight(LinearKind::V)), wo = at2(layer.weight(LinearKind::O)),
                         wg = at2(layer.weight(LinearKind::Gate)), wu = at2(layer.weight(LinearKind::Up)),
                         wd = at2(layer.weight(LinearKind::Down)), an = at2(layer.attn_norm), fn = at2(layer.ffn_norm);
        auto add_bias = [&](Vec y, LinearKind kind) { // Qwen2's q/k/v biases
            if (layer.bias_of(kind).defined()) {
                const at::Tensor b = at2(layer.bias_of(kind));
                for (std::size_t i = 0; i < y.size(); ++i)
                    y[i] += b.data_ptr<double>()[i];
            }
            return y;
        };
        std::vector<Vec> q(T), k(T), v(T);
        for (int t = 0; t < T; ++t) {
            const Vec h = rmsnorm(x[t], an);
            q[t] = add_bias(matvec(wq, h), LinearKind::Q);
            k[t] = add_bias(matvec(wk, h), LinearKind::K);
            v[t] = add_bias(matvec(wv, h), LinearKind::V);
            if (layer.q_norm.defined()) { // Qwen3: each head RMS-normalised before RoPE
                auto per_head = [&](Vec& y, int heads, const at::Tensor& w) {
                    for (int h = 0; h < heads; ++h) {
                        const Vec normed = rmsnorm(Vec(y.begin() + h * hd, y.begin() + (h + 1) * hd), at2(w));
                        std::copy(normed.begin(), normed.end(), y.begin() + h * hd);
                    }
                };
                per_head(q[t], H, layer.q_norm);
                per_head(k[t], KV, layer.k_norm);
            }
            rope(q[t], H, t);
            rope(k[t], KV, t);
        }
        for (int t = 0; t < T; ++t) {
            Vec att(static_cast<std::size_t>(H * hd), 0.0);
            for (int h = 0; h < H; ++h) {
                const int g = h / (H / KV);
                Vec score(static_cast<std::size_t>(t + 1));
                double mx = -1e300, sum = 0.0;
                for (int s = 0; s <= t; ++s) {
                    double dot = 0.0;
                    for (int i = 0; i < hd; ++i)
                        dot += q[t][h * hd + i] * k[s][g * hd + i];
                    score[s] = dot / std::sqrt(static_cast<double>(hd));
                    mx = std::max(mx, score[s]);
                }
                for (int s = 0; s <= t; ++s)
                    sum += (score[s] = std::exp(score[s] - mx));
                for (int s = 0; s <= t; ++s)
                    for (int i = 0; i < hd; ++i)
                        att[h * hd + i] += score[s] / sum * v[s][g * hd + i];
            }
            const Vec o = matvec(wo, att);
            for (int i = 0; i < D; ++i)
                x[t][i] += o[i];
            const Vec h2 = rmsnorm(x[t], fn);
            const Vec gate = matvec(wg, h2), up = matvec(wu, h2);
            Vec act(static_cast<std::size_t>(F));
            for (int i = 0; i < F; ++i)
                act[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
            const Vec down = matvec(wd, act);
            for (int i = 0; i < D; ++i)
                x[t][i] += down[i];
        }
    }
    at::Tensor out = at::empty({T, c.vocab_size}, at::kDouble);
    for (int t = 0; t < T; ++t) {
        const Vec logits = matvec(head, rmsnorm(x[t], final_norm));
        std::copy(logits.begin(), logits.end(), out[t].data_ptr<double>());
    }
    return out.to(at::kFloat);
}

/// A small synthetic model of `arch` with GQA; Llama 3.1-style RoPE scaling when `scaled`.
ModelConfig family_config(const std::string& arch, bool scaled)
{
    ModelConfig c;
    c.arch = arch;
    c.dim = 32; c.hidden_dim = 48; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2; c.vocab_size = 40;
    c.max_seq_len = 64;
    if (scaled) {
        // head_dim 8, theta 10000: wavelengths 6.3, 63, 628, 6283 against an original context of 16
        // (the test runs 48 positions, past it): one blended (4..16), three divided by the factor.
        c.rope_scaling = {RopeScaling::Type::Llama3, 4.0f, 1.0f, 4.0f, 16};
    }
    if (arch == "mistral")
        c.sliding_window = 24;
    if (arch == "qwen3")
        c.explicit_head_dim = 16; // 4 heads of 16: the attention (64) twice as wide as the stream (32)
    return c;
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

    void llama3RopeScalingMatchesTheFormula()
    {
        // Llama-3.1-8B: head_dim 128, theta 500000, factor 8, low 1, high 4, original 8192: 29
        // frequencies kept, 6 blended (i = 29..34), 29 divided by 8 (../shared/docs/MODEL-FAMILIES.md).
        ModelConfig c = synthetic_shape("llama-3.1-8b");
        QCOMPARE(c.head_dim(), 128);
        const std::vector<float> got = rope_inverse_frequencies(c);
        const std::vector<double> expected = reference_inverse_frequencies(c);
        ModelConfig plain = c;
        plain.rope_scaling = {};
        const std::vector<float> base = rope_inverse_frequencies(plain);
        int kept = 0, divided = 0, blended = 0;
        for (std::size_t i = 0; i < got.size(); ++i) {
            QVERIFY2(std::abs(got[i] / expected[i] - 1.0) < 1e-5, qPrintable(QString("frequency %1").arg(i)));
            if (got[i] == base[i])
                ++kept;
            else if (std::abs(got[i] * 8.0 / base[i] - 1.0) < 1e-6)
                ++divided;
            else {
                ++blended;
                QVERIFY(i >= 29 && i <= 34);
            }
        }
        QCOMPARE(kept, 29);
        QCOMPARE(blended, 6);
        QCOMPARE(divided, 29);
    }

    void familiesMatchThePlainLoopReference_data()
    {
        QTest::addColumn<QString>("arch");
        QTest::addColumn<bool>("scaled");
        QTest::addColumn<bool>("tied");
        QTest::newRow("llama (GQA, untied)") << "llama" << false << false;
        QTest::newRow("llama 3.1 (llama3 RoPE scaling, past the original context)") << "llama" << true << false;
        QTest::newRow("smollm-like (GQA, tied)") << "llama" << false << true;
        QTest::newRow("mistral (sliding window 24)") << "mistral" << false << false;
        QTest::newRow("qwen2 (q/k/v biases, tied)") << "qwen2" << false << true;
        QTest::newRow("qwen3 (q/k norms, head_dim 16 over dim 32)") << "qwen3" << false << true;
    }
    void familiesMatchThePlainLoopReference()
    {
        QFETCH(QString, arch);
        QFETCH(bool, scaled);
        QFETCH(bool, tied);
        ModelConfig c = family_config(arch.toStdString(), scaled);
        c.tied_embeddings = tied;
        Model m = make_synthetic_model(c, 11);
        if (arch == "qwen2") { // biases as large as real Qwen2's, so that dropping one shows
            for (DecoderLayer& layer : m.layers)
                for (at::Tensor& b : layer.bias)
                    if (b.defined())
                        b = b * 50.0;
            QVERIFY(m.layers[1].bias_of(LinearKind::K).defined());
        }
        if (arch == "qwen3") { // norm weights away from 1, so that skipping a norm shows
            for (DecoderLayer& layer : m.layers) {
                QCOMPARE(layer.weight(LinearKind::Q).size(0), 64);
                QCOMPARE(layer.weight(LinearKind::O).size(1), 64);
                layer.q_norm = at::linspace(0.3, 1.8, 16);
                layer.k_norm = at::linspace(1.6, 0.4, 16);
            }
        }
        // Positions up to 47 (past the window for Mistral, refused below; 24 otherwise in range).
        const int T = arch == "mistral" ? 24 : 48;
        std::vector<int> ids(T);
        for (int t = 0; t < T; ++t)
            ids[t] = (t * 7 + 3) % c.vocab_size;
        const at::Tensor ids_tensor = at::tensor(std::vector<std::int64_t>(ids.begin(), ids.end())).view({1, T});
        const at::Tensor expected = reference_logits(m, ids);
        const double tol = 1e-4 * std::max(1.0, expected.abs().max().item<double>());
        const at::Tensor batched = forward(m, ids_tensor)[0];
        QVERIFY2(max_abs_diff(batched, expected) < tol, qPrintable(QString::number(max_abs_diff(batched, expected))));
        for (DecoderBackend backend : {DecoderBackend::Cpu, DecoderBackend::Torch}) {
            const at::Tensor stepped = decode_all(m, ids_tensor[0], backend);
            QVERIFY2(max_abs_diff(stepped, expected) < tol, qPrintable(QString::number(max_abs_diff(stepped, expected))));
        }
        if (scaled) { // the scaling changes the logits past the first position: the test can see it
            ModelConfig unscaled_config = c;
            unscaled_config.rope_scaling = {};
            Model unscaled = m;
            unscaled.config = unscaled_config;
            const double scaled_error = max_abs_diff(batched, expected);
            const double unscaled_gap = max_abs_diff(forward(unscaled, ids_tensor)[0], expected);
            QVERIFY2(unscaled_gap > 20 * scaled_error,
                     qPrintable(QString("without scaling %1, with %2").arg(unscaled_gap).arg(scaled_error)));
        }
        if (arch == "qwen2") { // the biases matter: without them the logits differ
            Model unbiased = m;
            for (DecoderLayer& layer : unbiased.layers)
                layer.bias = {};
            unbiased.config.arch = "llama";
            QVERIFY(max_abs_diff(forward(unbiased, ids_tensor)[0], expected) > 20 * max_abs_diff(batched, expected));
        }
        if (arch == "qwen3") { // the norms matter: without them the logits differ
            Model unnormed = m;
            for (DecoderLayer& layer : unnormed.layers)
                layer.q_norm = layer.k_norm = at::Tensor();
            unnormed.config.arch = "llama";
            QVERIFY(max_abs_diff(forward(unnormed, ids_tensor)[0], expected) > 20 * max_abs_diff(batched, expected));
        }
        if (arch == "mistral") { // one position past the window is refused, never attended in full
            try {
                forward(m, at::zeros({1, 25}, at::kLong));
                QFAIL("a sequence past the sliding window was accepted");
            } catch (const Error& e) {
                QVERIFY2(QString(e.what()).contains("longer than the model's sliding attention window of 24"), e.what());
            }
            QVERIFY_THROWS_EXCEPTION(Error, make_decoder(m, DecoderBackend::Cpu, 25));
        }
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
