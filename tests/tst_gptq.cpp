// PB-GPTQ on one matrix: properties of the algorithm against RTN and an independent reference,
// exact dequantization from codes, dead columns, damping repair, and refusals.
#include "core/error.h"
#include "core/gptq.h"
#include "core/packed_checkpoint.h"
#include "core/preview.h"
#include "core/saliency.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <QtTest>

using namespace pbllm;
using namespace pbllm::test;

namespace {

/// H = 2/N X^T X for N correlated inputs (a few strong shared directions, as in LLM activations).
at::Tensor correlated_hessian(std::int64_t d, std::int64_t n = 2048, std::uint64_t seed = 1)
{
    at::Generator g = at::detail::createCPUGenerator(seed);
    const at::Tensor mix = at::normal(0.0, 1.0, {d, d}, g) / std::sqrt(static_cast<double>(d)) +
                           at::eye(d) * 0.5;
    const at::Tensor X = at::matmul(at::normal(0.0, 1.0, {n, d}, g), mix);
    return (at::matmul(X.t(), X) * (2.0 / n)).to(at::kDouble);
}

LayerQuantSettings pb(QuantMethod method = QuantMethod::PbGptq, double ratio = 0.1)
{
    LayerQuantSettings s;
    s.method = method;
    s.salient_ratio = ratio;
    return s;
}

double output_error(const at::Tensor& W, const at::Tensor& Q, const at::Tensor& H)
{
    const at::Tensor dW = (W - Q).to(at::kDouble);
    return (at::matmul(dW, H.to(at::kDouble)) * dW).sum().item<double>();
}

} // namespace

class TestGptq : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void identityHessianEqualsRtn()
    {
        // With H = I, U is diagonal: no error is fed forward, so PB-GPTQ is exactly RTN.
        const at::Tensor W = at::randn({48, 96}) * 0.05;
        const at::Tensor H = at::eye(96, at::kDouble);
        GptqOptions o;
        o.blocksize = 32;
        const QuantizedLinear a = quantize_linear("w", W, H, pb(QuantMethod::PbGptq), o);
        const QuantizedLinear b = quantize_linear("w", W, H, pb(QuantMethod::Rtn), o);
        QVERIFY(at::equal(a.dequantized, b.dequantized));
        QVERIFY(at::equal(a.salient, b.salient));
    }

    void errorFeedbackBeatsRtn_data()
    {
        QTest::addColumn<int>("method");
        QTest::addColumn<double>("ratio");
        QTest::newRow("pb-gptq 10%") << static_cast<int>(QuantMethod::PbGptq) << 0.1;
        QTest::newRow("pb-gptq 30%") << static_cast<int>(QuantMethod::PbGptq) << 0.3;
        QTest::newRow("gptq 3-bit") << static_cast<int>(QuantMethod::Gptq) << 0.0;
    }

    void errorFeedbackBeatsRtn()
    {
        QFETCH(int, method);
        QFETCH(double, ratio);
        const at::Tensor W = at::randn({64, 128}) * 0.05;
        const at::Tensor H = correlated_hessian(128);
        LayerQuantSettings s = pb(static_cast<QuantMethod>(method), ratio);
        s.bits = 3;
        LayerQuantSettings rtn = s;
        rtn.method = QuantMethod::Rtn;
        if (s.method == QuantMethod::Gptq) // RTN of plain GPTQ = same grid without feedback
            rtn = s;
        GptqOptions o;
        const QuantizedLinear q = quantize_linear("w", W, H, s, o);
        double baseline;
        if (s.method == QuantMethod::Gptq) {
            const RowGrid g = fit_row_grid(W, 3);
            const at::Tensor codes = (at::round(W / g.scale) + g.zero).clamp(0, 7);
            baseline = output_error(W, g.scale * (codes - g.zero), H);
        } else {
            baseline = output_error(W, quantize_linear("w", W, H, rtn, o).dequantized, H);
        }
        const double gptq = output_error(W, q.dequantized, H);
        QVERIFY2(gptq < 0.8 * baseline, qPrintable(QString("%1 vs RTN %2").arg(gptq).arg(baseline)));
        QVERIFY(std::abs(q.output_error - gptq / (at::matmul(W.to(at::kDouble), H) * W.to(at::kDouble)).sum().item<double>()) < 1e-4);
    }

    void outputErrorFromGptqLossesMatchesProduct_data()
    {
        QTest::addColumn<int>("method");
        QTest::addColumn<int>("groupsize");
        QTest::addColumn<bool>("actOrder");
        QTest::addColumn<int>("deadColumns");
        QTest::newRow("pb-gptq") << static_cast<int>(QuantMethod::PbGptq) << 0 << false << 0;
        QTest::newRow("pb-gptq dead columns") << static_cast<int>(QuantMethod::PbGptq) << 0 << false << 5;
        QTest::newRow("pb-gptq act-order dead") << static_cast<int>(QuantMethod::PbGptq) << 0 << true << 3;
        QTest::newRow("gptq 3-bit groups of 32") << static_cast<int>(QuantMethod::Gptq) << 32 << false << 2;
    }

    void outputErrorFromGptqLossesMatchesProduct()
    {
        // The reported error's numerator is summed from GPTQ's per-column losses (minus the damping
        // and dead-column terms) and its denominator may be supplied: both against the product.
        QFETCH(int, method);
        QFETCH(int, groupsize);
        QFETCH(bool, actOrder);
        QFETCH(int, deadColumns);
        const std::int64_t rows = 40, cols = 128;
        const at::Tensor W = at::randn({rows, cols}) * 0.05;
        at::Tensor H = correlated_hessian(cols, 1024, 3);
        for (int i = 0; i < deadColumns; ++i) {
            const std::int64_t c = 7 + 11 * i;
            H.select(0, c).zero_();
            H.select(1, c).zero_();
        }
        LayerQuantSettings s = pb(static_cast<QuantMethod>(method), 0.1);
        s.bits = 3;
        GptqOptions o;
        o.blocksize = 32;
        o.groupsize = groupsize;
        o.act_order = actOrder;
        const QuantizedLinear q = quantize_linear("w", W, H, s, o);
        at::Tensor Wm = W.clone(); // dead columns are zeroed before quantizing; H ignores them anyway
        Wm.masked_fill_((H.diagonal() == 0).unsqueeze(0), 0.0f);
        const double den = output_error(Wm, at::zeros_like(Wm), H);
        const double want = output_error(Wm, q.dequantized, H) / den;
        QVERIFY2(std::abs(q.output_error / want - 1.0) < 1e-4,
                 qPrintable(QString("%1 vs %2").arg(q.output_error, 0, 'g', 9).arg(want, 0, 'g', 9)));
        const QuantizedLinear given = quantize_linear("w", W, H, s, o, /*reference_energy=*/2.0 * den);
        QVERIFY(at::equal(given.dequantized, q.dequantized));
        QVERIFY(std::abs(given.output_error / (want / 2.0) - 1.0) < 1e-4);
    }

    void blockedEqualsUnblockedReference()
    {
        // Lazy batching is exact algebra: a naive column-by-column GPTQ in float64, updating every
        // remaining column after each one, gives the same weights (up to rounding-induced sign flips).
        const std::int64_t rows = 24, cols = 80;
        const at::Tensor W = at::randn({rows, cols}) * 0.05;
        const at::Tensor H = correlated_hessian(cols, 1024, 7);
        GptqOptions o;
        o.blocksize = 16;
        const QuantizedLinear q = quantize_linear("w", W, H, pb(), o);

        const HessianFactors f = factor_hessian(H, 0.01, "ref");
        const at::Tensor U = f.upper_inverse.to(at::kDouble);
        at::Tensor w = W.to(at::kDouble).clone();
        at::Tensor ref = at::empty_like(w);
        for (std::int64_t c = 0; c < cols; ++c) {
            for (std::int64_t r = 0; r < rows; ++r) {
                const float x = static_cast<float>(w[r][c].item<double>());
                float v;
                if (q.salient[r][c].item<bool>()) {
                    const float scale = q.grid.scale[r][0].item<float>(), zero = q.grid.zero[r][0].item<float>();
                    v = grid_value(grid_code(x, scale, zero, 255), scale, zero);
                } else {
                    const float mu = q.binary.mu[r][0].item<float>(), alpha = q.binary.alpha[r][0].item<float>();
                    v = binary_value(binary_sign(x, mu), mu, alpha);
                }
                ref[r][c] = v;
            }
            const at::Tensor err = (w.select(1, c) - ref.select(1, c)) / U[c][c];
            w.narrow(1, c + 1, cols - c - 1) -= at::outer(err, U[c].narrow(0, c + 1, cols - c - 1));
        }
        const double differing = (ref.to(at::kFloat) - q.dequantized).abs().gt(1e-4).to(at::kDouble).mean().item<double>();
        QVERIFY2(differing < 0.01, qPrintable(QString::number(differing)));
        QVERIFY(std::abs(output_error(W, q.dequantized, H) / output_error(W, ref.to(at::kFloat), H) - 1.0) < 0.02);
    }

    void codesRebuildWeightsExactly_data()
    {
        QTest::addColumn<int>("method");
        QTest::addColumn<int>("bits");
        QTest::addColumn<int>("groupsize");
        QTest::addColumn<bool>("act_order");
        QTest::addColumn<int>("binarizer");
        QTest::newRow("pb-gptq 8-bit xnor") << 0 << 8 << 0 << false << 0;
        QTest::newRow("pb-gptq 4-bit xnor-code") << 0 << 4 << 0 << false << 1;
        QTest::newRow("pb-gptq fp16 salient, sign") << 0 << 16 << 0 << false << 2;
        QTest::newRow("pb-gptq groups of 32") << 0 << 8 << 32 << false << 0;
        QTest::newRow("pb-gptq act-order") << 0 << 8 << 0 << true << 0;
        QTest::newRow("rtn") << 1 << 8 << 0 << false << 0;
        QTest::newRow("gptq 4-bit groups of 32") << 2 << 4 << 32 << false << 0;
        QTest::newRow("gptq 2-bit act-order") << 2 << 2 << 0 << true << 0;
    }

    void codesRebuildWeightsExactly()
    {
        QFETCH(int, method);
        QFETCH(int, bits);
        QFETCH(int, groupsize);
        QFETCH(bool, act_order);
        QFETCH(int, binarizer);
        LayerQuantSettings s = pb(static_cast<QuantMethod>(method), 0.15);
        s.salient_bits = bits;
        s.bits = bits;
        s.binarizer = static_cast<Binarizer>(binarizer);
        GptqOptions o;
        o.blocksize = 32;
        o.groupsize = groupsize;
        o.act_order = act_order;
        const at::Tensor W = at::randn({40, 96}) * 0.05;
        const QuantizedLinear q = quantize_linear("w", W, correlated_hessian(96), s, o);
        q.validate();
        QVERIFY(at::equal(q.dequantize(), q.dequantized));
        if (s.method != QuantMethod::Gptq)
            QVERIFY(std::abs(q.salient_ratio - 0.15) < 0.01);
    }

    void deadColumnsAreZeroedAndHarmless()
    {
        at::Tensor H = correlated_hessian(32);
        H.select(0, 5).zero_();
        H.select(1, 5).zero_();
        const at::Tensor W = at::randn({16, 32});
        const QuantizedLinear q = quantize_linear("w", W, H, pb(), {});
        QVERIFY(at::isfinite(q.dequantized).all().item<bool>());
        const HessianFactors f = factor_hessian(H, 0.01, "w");
        QCOMPARE(f.dead.sum().item<std::int64_t>(), std::int64_t(1));
        QVERIFY(f.dead[5].item<bool>());
        // The dead column is scored from W[:, 5] = 0, so it is never salient.
        QCOMPARE(q.salient.select(1, 5).sum().item<std::int64_t>(), std::int64_t(0));
    }

    void dampingRepairOrRefusal()
    {
        // Indefinite but repairable: eigenvalues -1 and 3; damping is raised until it factors.
        const at::Tensor mild = at::tensor({1.0, 2.0, 2.0, 1.0}, at::kDouble).view({2, 2});
        const HessianFactors f = factor_hessian(mild, 0.01, "layer A");
        QVERIFY2(QString::fromStdString(f.note).contains("damping raised"), f.note.c_str());
        // Hopeless: eigenvalue -999 needs more than 1000x the damping.
        const at::Tensor bad = at::tensor({1.0, 1000.0, 1000.0, 1.0}, at::kDouble).view({2, 2});
        try {
            factor_hessian(bad, 0.01, "layer B");
            QFAIL("an indefinite Hessian was accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("layer B: Hessian is not positive definite"), e.what());
        }
        QVERIFY_THROWS_EXCEPTION(Error, factor_hessian(-at::eye(3, at::kDouble), 0.01, "neg"));
        at::Tensor nan = at::eye(3, at::kDouble);
        nan[1][1] = NAN;
        QVERIFY_THROWS_EXCEPTION(Error, factor_hessian(nan, 0.01, "nan"));
    }

    void previewAgreesWithRtn_data()
    {
        QTest::addColumn<double>("ratio");
        QTest::addColumn<int>("bits");
        QTest::addColumn<int>("binarizer");
        QTest::addColumn<int>("metric");
        QTest::newRow("10% 8-bit xnor hessian") << 0.1 << 8 << 0 << static_cast<int>(SaliencyMetric::Hessian);
        QTest::newRow("30% 4-bit xnor-code hessian") << 0.3 << 4 << 1 << static_cast<int>(SaliencyMetric::Hessian);
        QTest::newRow("5% fp16 sign inv-diag") << 0.05 << 16 << 2 << static_cast<int>(SaliencyMetric::HessianInvDiag);
        QTest::newRow("20% 8-bit magnitude") << 0.2 << 8 << 0 << static_cast<int>(SaliencyMetric::Magnitude);
        QTest::newRow("0%") << 0.0 << 8 << 0 << static_cast<int>(SaliencyMetric::Hessian);
    }

    void previewAgreesWithRtn()
    {
        QFETCH(double, ratio);
        QFETCH(int, bits);
        QFETCH(int, binarizer);
        QFETCH(int, metric);
        const at::Tensor W = at::randn({48, 160}) * 0.05;
        const at::Tensor H = correlated_hessian(160);
        LayerQuantSettings s = pb(QuantMethod::Rtn, ratio);
        s.salient_bits = bits;
        s.binarizer = static_cast<Binarizer>(binarizer);
        s.metric = static_cast<SaliencyMetric>(metric);
        const QuantizedLinear q = quantize_linear("w", W, H, s, {});
        LayerPreview preview("w", W, H, s.metric);
        const PreviewResult p = preview.preview(ratio, bits, s.binarizer, /*exact_hessian_error=*/true);
        QCOMPARE(p.salient_ratio, q.salient_ratio);
        // Two code paths summing float errors in different orders (the preview's SIMD blocks depend
        // on buffer alignment): equal to float rounding, relative 1e-5 (2e-6 absolute was seen).
        QVERIFY2(std::abs(p.weight_error - q.weight_error) < 1e-5 * std::max(1.0, q.weight_error),
                 qPrintable(QString("%1 vs %2").arg(p.weight_error, 0, 'g', 9).arg(q.weight_error, 0, 'g', 9)));
        QVERIFY2(std::abs(p.hessian_error - q.output_error) < 1e-5 * std::max(1.0, q.output_error),
                 qPrintable(QString("%1 vs %2").arg(p.hessian_error).arg(q.output_error)));
        QVERIFY(p.hessian_error_diag >= 0.0);
        QVERIFY(std::abs(p.headline_bits - (bits * q.salient_ratio + 1 - q.salient_ratio)) < 1e-12);
        // The byte estimate is close to what packing really stores.
        const PackedLinear packed = pack_linear(q);
        QVERIFY2(std::abs(static_cast<double>(p.estimated_bytes) / packed.bytes() - 1.0) < 0.1,
                 qPrintable(QString("%1 vs %2").arg(p.estimated_bytes).arg(packed.bytes())));
    }

    void refusals()
    {
        at::Tensor W = at::randn({4, 8});
        const at::Tensor H = at::eye(8, at::kDouble);
        W[1][2] = NAN;
        try {
            quantize_linear("layer C", W, H, pb(), {});
            QFAIL("NaN weights accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("layer C: weights contain NaN"), e.what());
        }
        QVERIFY_THROWS_EXCEPTION(Error, quantize_linear("x", at::randn({4, 8}), {}, pb(), {})); // hessian metric, no H
        QVERIFY_THROWS_EXCEPTION(Error, quantize_linear("x", at::randn({4, 8}), at::eye(9, at::kDouble), pb(), {}));
        GptqOptions both;
        both.act_order = true;
        both.groupsize = 128;
        QVERIFY_THROWS_EXCEPTION(Error, quantize_linear("x", at::randn({4, 256}), at::eye(256, at::kDouble), pb(), both));
        // Magnitude RTN needs no calibration at all.
        LayerQuantSettings m = pb(QuantMethod::Rtn);
        m.metric = SaliencyMetric::Magnitude;
        const QuantizedLinear q = quantize_linear("x", at::randn({4, 8}), {}, m, {});
        QCOMPARE(q.output_error, -1.0);
    }
};

QTEST_GUILESS_MAIN(TestGptq)
#include "tst_gptq.moc"
