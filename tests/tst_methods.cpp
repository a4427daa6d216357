// The method registry and every method in it: names, a conformance loop (quantize, pack, unpack
// bit for bit, bits as stored), and BiLLM against its definition: the incremental searches
// against from-scratch re-binarization, hand-worked errors, and the block quantizer against an
// independent recomputation.
#include "core/error.h"
#include "core/packed_checkpoint.h"
#include "core/preview.h"
#include "core/quant/methods/arb/arb.h"
#include "core/quant/methods/billm/billm.h"
#include "core/ptq.h"
#include "core/synthetic.h"
#include "core/quant/registry.h"
#include "core/quant/settings.h"
#include "core/saliency.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <QTemporaryDir>
#include <QtTest>

#include <set>

using namespace pbllm;
using namespace pbllm::test;

namespace {

/// H = 2/N X^T X for N correlated inputs.
at::Tensor correlated_hessian(std::int64_t d, std::int64_t n = 1024, std::uint64_t seed = 1)
{
    at::Generator g = at::detail::createCPUGenerator(seed);
    const at::Tensor mix = at::normal(0.0, 1.0, {d, d}, g) / std::sqrt(static_cast<double>(d)) + at::eye(d) * 0.5;
    const at::Tensor X = at::matmul(at::normal(0.0, 1.0, {n, d}, g), mix);
    return (at::matmul(X.t(), X) * (2.0 / n)).to(at::kDouble);
}

at::Tensor heavy_tailed_weights(std::int64_t rows, std::int64_t cols, std::uint64_t seed)
{
    at::Generator g = at::detail::createCPUGenerator(seed);
    // Gaussian with a few large columns, as LLM weights have.
    at::Tensor W = at::normal(0.0, 0.05, {rows, cols}, g);
    W.narrow(1, 3, 2).mul_(6.0);
    return W;
}

double relative_gap(double a, double b) { return std::abs(a - b) / std::max({std::abs(a), std::abs(b), 1e-12}); }

} // namespace

class TestMethods : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void registryNamesRoundTrip()
    {
        std::set<std::string> names;
        for (const MethodInfo& m : methods()) {
            QVERIFY2(names.insert(m.name).second, m.name);
            QCOMPARE(static_cast<int>(parse_method(m.name)), static_cast<int>(m.id));
            QCOMPARE(to_string(m.id), std::string(m.name));
            QVERIFY(std::string(m.summary).size() > 10);
            QVERIFY(!m.settings.empty());
        }
        QVERIFY(find_method("billm"));
        QVERIFY(!find_method("bilm"));
        try {
            parse_method("bilm");
            QFAIL("an unknown method was accepted");
        } catch (const Error& e) {
            const std::string what = e.what();
            QVERIFY2(what.find("'bilm'") != std::string::npos && what.find(method_names()) != std::string::npos, e.what());
        }
        // qat has no post-training quantizer: the dispatcher says where it runs.
        LayerQuantSettings qat;
        qat.method = QuantMethod::Qat;
        try {
            quantize_linear("w", at::randn({4, 8}), at::eye(8, at::kDouble), qat, GptqOptions{});
            QFAIL("qat ran as a post-training quantizer");
        } catch (const Error& e) {
            QVERIFY2(std::string(e.what()).find("pbllm qat") != std::string::npos, e.what());
        }
    }

    void conformance_data()
    {
        QTest::addColumn<QString>("method");
        for (const MethodInfo& m : methods())
            if (m.quantize)
                QTest::newRow(m.name) << QString(m.name);
    }

    /// Every post-training method: quantize, pack, unpack bit for bit, the measured bits are the
    /// stored bytes, the payload's memory bound holds, and the row's preview estimates the bits
    /// within a tenth of a bit (the preview runs without compensation, on every row here).
    void conformance()
    {
        QFETCH(QString, method);
        LayerQuantSettings s;
        s.method = parse_method(method.toStdString());
        s.bits = 3;
        const at::Tensor W = heavy_tailed_weights(24, 200, 3);
        const at::Tensor H = correlated_hessian(200);
        GptqOptions o;
        o.blocksize = 64;
        const QuantizedLinear q = quantize_linear("model.layers.0.mlp.down_proj", W, H, s, o);
        QCOMPARE(static_cast<int>(q.settings.method), static_cast<int>(s.method));
        QVERIFY(q.weight_error > 0.0 && q.weight_error < 1.0);
        QVERIFY(q.output_error > 0.0 && q.output_error < 1.0);
        QVERIFY(at::equal(q.dequantize(), q.dequantized));
        const PackedLinear p = pack_linear(q);
        const QuantizedLinear back = unpack_linear(p, "round trip");
        QVERIFY(at::equal(back.dequantized, q.dequantized));
        QCOMPARE(static_cast<int>(back.settings.method), static_cast<int>(s.method));
        const BitsPerWeight bits = bits_per_weight(std::vector<PackedLinear>{p});
        QCOMPARE(bits.measured, 8.0 * static_cast<double>(p.bytes()) / static_cast<double>(W.numel()));
        QVERIFY(bits.headline <= bits.with_index + 1e-12 && bits.with_index <= bits.measured + 1e-12);
        QVERIFY(bits.headline <= bits.with_bitmap + 1e-12);
        const MethodInfo& m = method_info(s.method);
        const double bound = stored_bits_bound(s, 24, 200, o.blocksize, o.groupsize);
        QVERIFY2(bits.measured <= bound && bits.measured > 0.6 * bound,
                 qPrintable(QString("%1, bound %2").arg(bits.measured).arg(bound)));
        if (!m.block_binary()) { // groups of 128 columns: the last one short (72)
            GptqOptions grouped = o;
            grouped.groupsize = 128;
            const PackedLinear pg = pack_linear(quantize_linear("w", W, H, s, grouped));
            const double measured = 8.0 * static_cast<double>(pg.bytes()) / static_cast<double>(W.numel());
            const double grouped_bound = stored_bits_bound(s, 24, 200, grouped.blocksize, grouped.groupsize);
            QVERIFY2(measured <= grouped_bound, qPrintable(QString("%1, bound %2").arg(measured).arg(grouped_bound)));
        }
        QVERIFY(m.preview);
        LayerPreview preview("w", W, H, SaliencyMetric::Hessian, PreviewOptions{});
        const PreviewResult r = m.preview(preview, s, o.blocksize, o.percdamp);
        QCOMPARE(r.grid_bits, m.plain_grid ? s.bits : m.block_binary() ? 2 : s.salient_bits);
        QVERIFY2(std::abs(r.estimated_bits - bits.measured) < 0.1 * bits.measured,
                 qPrintable(QString("preview %1, measured %2").arg(r.estimated_bits).arg(bits.measured)));
        QVERIFY2(r.weight_error > 0.0 && r.weight_error < 1.0, qPrintable(QString::number(r.weight_error)));
    }

    void billmSearchMatchesReference_data()
    {
        QTest::addColumn<bool>("on_scores");
        QTest::addColumn<int>("rows");
        QTest::addColumn<int>("cols");
        QTest::addColumn<double>("outlier");
        QTest::newRow("scores 9x40") << true << 9 << 40 << 6.0;
        QTest::newRow("weights 9x40") << false << 9 << 40 << 6.0;
        QTest::newRow("scores 5x128") << true << 5 << 128 << 6.0;
        QTest::newRow("weights 3x7 (fewer columns than the search's k)") << false << 3 << 7 << 6.0;
        // An outlier channel 1e4 x the rest: its scores are 1e8 x, and the small sets' errors must
        // not drown in the large ones' sums.
        QTest::newRow("scores 6x64, outlier channel") << true << 6 << 64 << 1e4;
    }

    /// The incremental searches (sorted rows, Fenwick prefix sums) give the errors of
    /// re-binarizing every candidate from scratch, and so the same choices.
    void billmSearchMatchesReference()
    {
        QFETCH(bool, on_scores);
        QFETCH(int, rows);
        QFETCH(int, cols);
        QFETCH(double, outlier);
        at::Tensor W = heavy_tailed_weights(rows, cols, 11);
        W.select(1, 0).mul_(outlier);
        at::Generator g = at::detail::createCPUGenerator(12);
        const at::Tensor S = W.pow(2) / (at::rand({1, cols}, g) + 0.5).pow(2);
        const at::Tensor V = on_scores ? S : W;
        const BillmBlockChoice fast = billm_search_block(S, V, 49, false, false);
        const BillmBlockChoice ref = billm_search_block(S, V, 49, false, true);
        QCOMPARE(fast.column_errors.size(), static_cast<std::size_t>(std::min(49, cols)));
        QCOMPARE(fast.break_errors.size(), std::size_t(81));
        // Relative to each candidate's own error: the small ones count as much as the large.
        for (std::size_t k = 0; k < ref.column_errors.size(); ++k)
            QVERIFY2(std::abs(fast.column_errors[k] - ref.column_errors[k]) <= 1e-7 * ref.column_errors[k] + 1e-300,
                     qPrintable(QString("k=%1: %2 vs %3").arg(k + 1).arg(fast.column_errors[k]).arg(ref.column_errors[k])));
        QCOMPARE(fast.salient_columns, ref.salient_columns);
        for (std::size_t t = 0; t < ref.break_errors.size(); ++t)
            QVERIFY2(std::abs(fast.break_errors[t] - ref.break_errors[t]) <= 1e-7 * ref.break_errors[t] + 1e-300,
                     qPrintable(QString("p%1: %2 vs %3").arg(t).arg(fast.break_errors[t]).arg(ref.break_errors[t])));
        QCOMPARE(fast.break_point, ref.break_point);
        // The break candidates are nondecreasing quantiles of |S| with salient positions as zero.
        for (std::size_t t = 1; t < fast.break_candidates.size(); ++t)
            QVERIFY(fast.break_candidates[t] >= fast.break_candidates[t - 1]);
    }

    /// One row [10, 4, 2, -2, -6] (scores = |values|): columns by |S| are 0, 4, 1, 2, 3.
    /// k = 1: {10} is exact; {4, 2, -2, -6}: mu1 = -0.5, alpha1 = 3.5, residuals 1, -1, 2, -2,
    /// mu2 = 0, alpha2 = 1.5, error 4 x 0.5^2 = 1. k = 2: {10, -6} exact; {4, 2, -2}:
    /// mu1 = 4/3, alpha1 = 20/9, residuals 4/9, -14/9, -10/9, mu2 = -20/27, |r - mu2| = 32, 22, 10
    /// (/27), alpha2 = 64/81, error (32^2 + 2^2 + 34^2) / 81^2 = 2184/6561.
    void billmHandWorkedErrors()
    {
        const at::Tensor V = at::tensor({10.0f, 4.0f, 2.0f, -2.0f, -6.0f}).view({1, 5});
        for (bool reference : {false, true}) {
            const BillmBlockChoice c = billm_search_block(V.abs(), V, 2, false, reference);
            QCOMPARE(c.column_order, (std::vector<std::int64_t>{0, 4, 1, 2, 3}));
            QCOMPARE(c.column_errors.size(), std::size_t(2));
            QVERIFY(relative_gap(c.column_errors[0], 1.0) < 1e-12);
            QVERIFY(relative_gap(c.column_errors[1], 2184.0 / 6561.0) < 1e-12);
            QCOMPARE(c.salient_columns, 2);
        }
        // numpy's linear quantile: position q (n - 1).
        QCOMPARE(quantile_of_sorted({0.0f, 1.0f, 2.0f, 3.0f, 4.0f}, 0.1), 0.4);
        QCOMPARE(quantile_of_sorted({0.0f, 1.0f, 2.0f, 3.0f, 4.0f}, 0.9), 3.6);
    }

    /// Each block's output is its searched masks binarized per row (recomputed here in float64
    /// from the search's choice), and the later columns are compensated by the block's error
    /// through U (done here too, so each block sees the weights the quantizer saw). A correlated
    /// Hessian and a short last block.
    void billmBlockQuantizerMatchesRecomputation()
    {
        const std::int64_t rows = 6, cols = 56, block = 24;
        const at::Tensor H = correlated_hessian(cols);
        GptqOptions o;
        o.blocksize = block;
        LayerQuantSettings s;
        s.method = QuantMethod::Billm;
        const HessianFactors f = factor_hessian(H, o.percdamp, "w");
        const at::Tensor d = f.upper_inverse.diagonal().contiguous();
        auto check = [&](const QuantizedLinear& q, bool exact) {
            at::Tensor W = heavy_tailed_weights(rows, cols, 5);
            for (std::int64_t b0 = 0; b0 < cols; b0 += block) {
                const std::int64_t nb = std::min(block, cols - b0);
                const at::Tensor Wb = W.narrow(1, b0, nb).contiguous();
                const at::Tensor Sb = (Wb.pow(2) / d.narrow(0, b0, nb).pow(2).unsqueeze(0)).contiguous();
                const BillmBlockChoice c = billm_search_block(Sb, Sb, 49);
                std::vector<bool> salient(static_cast<std::size_t>(nb), false);
                for (int i = 0; i < c.salient_columns; ++i)
                    salient[static_cast<std::size_t>(c.column_order[static_cast<std::size_t>(i)])] = true;
                for (std::int64_t r = 0; r < rows; ++r) {
                    // Groups: 0 salient, 1 concentrated, 2 sparse.
                    std::vector<std::vector<std::int64_t>> groups(3);
                    for (std::int64_t j = 0; j < nb; ++j) {
                        const float key = std::fabs(Sb[r][j].item<float>());
                        groups[salient[static_cast<std::size_t>(j)] ? 0 : key < c.break_point ? 1 : 2].push_back(j);
                    }
                    for (int g = 0; g < 3; ++g) {
                        std::vector<double> x, out;
                        for (std::int64_t j : groups[static_cast<std::size_t>(g)])
                            x.push_back(Wb[r][j].item<float>());
                        out.assign(x.size(), 0.0);
                        for (int order = 0; order < (g == 0 ? 2 : 1) && !x.empty(); ++order) {
                            double mu = 0.0, alpha = 0.0;
                            for (double v : x) mu += v;
                            mu = round_to_fp16(static_cast<float>(mu / static_cast<double>(x.size())));
                            for (double v : x) alpha += std::abs(v - mu);
                            alpha = round_to_fp16(static_cast<float>(alpha / static_cast<double>(x.size())));
                            for (std::size_t i = 0; i < x.size(); ++i) {
                                const double q1 = x[i] - mu >= 0 ? mu + alpha : mu - alpha;
                                out[i] += q1;
                                x[i] -= q1;
                            }
                        }
                        for (std::size_t i = 0; i < out.size(); ++i) {
                            const std::int64_t j = groups[static_cast<std::size_t>(g)][i];
                            const double got = q.dequantized[r][b0 + j].item<float>();
                            QVERIFY2(std::abs(got - out[i]) <= 1e-6 * (1.0 + std::abs(out[i])),
                                     qPrintable(QString("row %1 col %2 group %3: %4 vs %5").arg(r).arg(b0 + j).arg(g).arg(got).arg(out[i])));
                        }
                    }
                }
                if (b0 + nb < cols) {
                    const at::Tensor delta = Wb - q.dequantized.narrow(1, b0, nb);
                    at::Tensor E;
                    if (!exact) { // the authors' compensation: each column's error over its own U_jj
                        E = delta / d.narrow(0, b0, nb).unsqueeze(0);
                    } else { // GPTQ's column walk with Q fixed, written out
                        const at::Tensor Ub = f.upper_inverse.narrow(0, b0, nb).narrow(1, b0, nb);
                        at::Tensor walk = delta.clone();
                        E = at::zeros_like(delta);
                        for (std::int64_t j = 0; j < nb; ++j) {
                            E.select(1, j).copy_(walk.select(1, j) / Ub[j][j]);
                            walk.narrow(1, j, nb - j).sub_(E.select(1, j).unsqueeze(1) * Ub[j].narrow(0, j, nb - j).unsqueeze(0));
                        }
                    }
                    W.narrow(1, b0 + nb, cols - b0 - nb)
                        .addmm_(E, f.upper_inverse.narrow(0, b0, nb).narrow(1, b0 + nb, cols - b0 - nb), 1, -1);
                }
            }
        };
        const QuantizedLinear q = quantize_linear("w", heavy_tailed_weights(rows, cols, 5), H, s, o);
        check(q, false);
        if (QTest::currentTestFailed())
            return;
        LayerQuantSettings exact = s;
        exact.block_binary.compensation = BillmCompensation::Exact;
        const QuantizedLinear qe = quantize_linear("w", heavy_tailed_weights(rows, cols, 5), H, exact, o);
        check(qe, true);
        if (QTest::currentTestFailed())
            return;
        // The exact compensation beats none (H' = I: the same searches on the original weights);
        // the diagonal form need not (on this Hessian it does worse than none: hence the option).
        const at::Tensor W0 = heavy_tailed_weights(rows, cols, 5);
        const QuantizedLinear plain = quantize_linear("w", W0, at::eye(cols, at::kDouble), s, o);
        auto energy = [&](const at::Tensor& A) { return (at::matmul(A.to(at::kDouble), H) * A.to(at::kDouble)).sum().item<double>(); };
        QVERIFY2(energy(W0 - qe.dequantized) < energy(W0 - plain.dequantized),
                 qPrintable(QString("%1 vs %2").arg(energy(W0 - qe.dequantized)).arg(energy(W0 - plain.dequantized))));
    }

    /// ARB: every iteration sets the mean, the scale(s) and the signs to their best given the
    /// rest, so the group's squared error never rises (both orders, many random groups).
    void arbIterationsNeverRaiseTheError()
    {
        at::Generator g = at::detail::createCPUGenerator(21);
        for (int trial = 0; trial < 200; ++trial) {
            const std::int64_t n = 1 + trial % 37;
            at::Tensor t = at::normal(0.0, 1.0, {n}, g);
            if (trial % 3 == 0)
                t = t.pow(3); // heavy tails
            const std::vector<float> x(t.data_ptr<float>(), t.data_ptr<float>() + n);
            double mean = 0.0, dev = 0.0;
            for (float v : x) mean += v;
            mean /= static_cast<double>(n);
            for (float v : x) dev += std::abs(v - mean);
            dev /= static_cast<double>(n);
            std::vector<double> e1, e2;
            arb_refine_order1(x, {mean, dev}, kArbIterations, &e1);
            arb_refine_order2(x, {mean, dev, 0.5 * dev}, kArbIterations, &e2);
            QCOMPARE(e1.size(), std::size_t(kArbIterations + 1));
            for (const std::vector<double>* e : {&e1, &e2})
                for (std::size_t i = 1; i < e->size(); ++i)
                    QVERIFY2((*e)[i] <= (*e)[i - 1] * (1.0 + 1e-12) + 1e-15,
                             qPrintable(QString("trial %1 step %2: %3 after %4").arg(trial).arg(i).arg((*e)[i]).arg((*e)[i - 1])));
        }
    }

    /// x = [0, 0, 0, 3]: the plain fit mu = 0.75, alpha = 1.125 errs by 1.6875. One ARB round:
    /// mu = mean(x - alpha B) = 1.3125, alpha = mean(B (x - mu)) = 1.40625, levels -0.09375 and
    /// 2.71875, error 3 x 0.09375^2 + 0.28125^2 = 0.10546875. It converges to levels 0 and 3.
    void arbHandWorked()
    {
        std::vector<double> errors;
        const OrderOneFit f = arb_refine_order1({0.0f, 0.0f, 0.0f, 3.0f}, {0.75, 1.125}, kArbIterations, &errors);
        QCOMPARE(errors[0], 1.6875);
        QCOMPARE(errors[1], 0.10546875);
        QVERIFY(std::abs(f.mu - 1.5) < 1e-6 && std::abs(f.alpha - 1.5) < 1e-6);
        const OrderOneFit one = arb_refine_order1({0.0f, 0.0f, 0.0f, 3.0f}, {0.75, 1.125}, 1);
        QCOMPARE(one.mu, 1.3125);
        QCOMPARE(one.alpha, 1.40625);
    }

    /// arb runs BiLLM's searches and storage and refines each group's fit: with H = I (nothing
    /// compensated) the masks are the same, and the error is lower.
    void arbRefinesBillm()
    {
        const at::Tensor W = heavy_tailed_weights(32, 256, 9);
        const at::Tensor H = at::eye(256, at::kDouble);
        LayerQuantSettings billm, arb;
        billm.method = QuantMethod::Billm;
        arb.method = QuantMethod::Arb;
        const QuantizedLinear b = quantize_linear("w", W, H, billm, GptqOptions{});
        const QuantizedLinear a = quantize_linear("w", W, H, arb, GptqOptions{});
        QVERIFY(at::equal(a.block_binary.salient_cols, b.block_binary.salient_cols));
        QVERIFY(at::equal(a.block_binary.sparse, b.block_binary.sparse));
        QVERIFY2(a.weight_error < 0.97 * b.weight_error, qPrintable(QString("%1 vs %2").arg(a.weight_error).arg(b.weight_error)));
        // One shared mean at the salient columns: stored as mu1, with mu2 = 0.
        QVERIFY(at::equal(a.block_binary.params.select(2, kSalientMu2), at::zeros({32, 2})));
        const QuantizedLinear back = unpack_linear(pack_linear(a), "arb");
        QVERIFY(at::equal(back.dequantized, a.dequantized));
        QCOMPARE(static_cast<int>(back.settings.method), static_cast<int>(QuantMethod::Arb));
    }

    /// ARB-X: with the signs fixed, each round sets mu, then each scale, to its best in the metric
    /// of S, so r^T S r never rises (random PSD S, both orders, positions a subset of the block).
    void arbxIterationsNeverRaiseTheMetricError()
    {
        at::Generator g = at::detail::createCPUGenerator(5);
        const std::int64_t n = 24;
        const at::Tensor S = correlated_hessian(n, 64, 8).contiguous();
        const double* Sp = S.data_ptr<double>();
        for (int trial = 0; trial < 60; ++trial) {
            std::vector<std::int64_t> at;
            for (std::int64_t c = trial % 3; c < n; c += 1 + trial % 4)
                at.push_back(c);
            const at::Tensor t = at::normal(0.0, 1.0, {static_cast<std::int64_t>(at.size())}, g);
            const std::vector<float> x(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
            std::vector<double> b1(x.size()), b2(x.size());
            for (std::size_t i = 0; i < x.size(); ++i) {
                b1[i] = x[i] >= 0 ? 1.0 : -1.0;
                b2[i] = (i * 7 + static_cast<std::size_t>(trial)) % 3 == 0 ? -1.0 : 1.0;
            }
            std::vector<double> e1, e2;
            const OrderOneFit f1 = arbx_refine_order1(x, b1, Sp, n, at, {0.1, 0.5}, kArbIterations, &e1);
            const OrderTwoFit f2 = arbx_refine_order2(x, b1, b2, Sp, n, at, {0.1, 0.5, 0.2}, kArbIterations, &e2);
            QCOMPARE(e1.size(), std::size_t(kArbIterations + 1));
            for (const std::vector<double>* e : {&e1, &e2})
                for (std::size_t i = 1; i < e->size(); ++i)
                    QVERIFY2((*e)[i] <= (*e)[i - 1] * (1.0 + 1e-10) + 1e-13,
                             qPrintable(QString("trial %1 step %2: %3 after %4").arg(trial).arg(i).arg((*e)[i]).arg((*e)[i - 1])));
            // The error reported is r^T S r of the fit returned, computed independently here.
            double direct = 0.0;
            for (std::size_t i = 0; i < at.size(); ++i)
                for (std::size_t j = 0; j < at.size(); ++j)
                    direct += (x[i] - f1.mu - f1.alpha * b1[i]) * Sp[at[i] * n + at[j]] * (x[j] - f1.mu - f1.alpha * b1[j]);
            QVERIFY(relative_gap(direct, e1.back()) < 1e-9);
            QVERIFY(e2.back() <= e2.front() && std::isfinite(f2.alpha2));
        }
    }

    /// Two weights, signs (+1, -1), S = diag(1, 4): mu + alpha = 1 and mu - alpha = -3 fit
    /// exactly (mu = -1, alpha = 2). The coordinate rounds contract by (3/5)^2 each, so 15 rounds
    /// land within 1e-5. metric_error of r = (1, -1) under [[2, 1], [1, 2]] is 2 - 1 - 1 + 2 = 2.
    void arbxHandWorked()
    {
        const double S[4] = {1.0, 0.0, 0.0, 4.0};
        const OrderOneFit f = arbx_refine_order1({1.0f, -3.0f}, {1.0, -1.0}, S, 2, {0, 1}, {0.0, 1.0}, kArbIterations);
        QVERIFY2(std::abs(f.mu + 1.0) < 1e-5 && std::abs(f.alpha - 2.0) < 1e-5, qPrintable(QString("%1 %2").arg(f.mu).arg(f.alpha)));
        const double T[4] = {2.0, 1.0, 1.0, 2.0};
        QCOMPARE(metric_error({1.0f, -1.0f}, {1.0, 1.0}, {}, T, 2, {0, 1}, 0.0, 0.0, 0.0), 2.0);
        // A position outside the group does not count: only (0, 0) of T, r = 1.
        QCOMPARE(metric_error({1.0f}, {1.0}, {}, T, 2, {0}, 0.0, 0.0, 0.0), 2.0);
    }

    /// ARB-RC: each scale update is a least-squares solve and each sign update the nearest level,
    /// so the masked squared error never rises (random masks, both orders).
    void arbRcIterationsNeverRaiseTheError()
    {
        at::Generator g = at::detail::createCPUGenerator(17);
        for (int trial = 0; trial < 30; ++trial) {
            const std::int64_t rows = 3 + trial % 7, cols = 5 + trial % 11;
            at::Tensor W = at::normal(0.0, 1.0, {rows, cols}, g);
            if (trial % 2)
                W = W * at::rand({rows, 1}, g) * at::rand({1, cols}, g) * 4.0; // row and column structure
            const at::Tensor mask = (at::rand({rows, cols}, g) < 0.7).contiguous();
            for (int order : {1, 2}) {
                std::vector<double> e;
                const RowColumnFit f =
                    arb_rc_fit(W.data_ptr<float>(), mask.data_ptr<bool>(), rows, cols, order, kArbIterations, &e);
                QCOMPARE(e.size(), std::size_t(kArbIterations + 1));
                for (std::size_t i = 1; i < e.size(); ++i)
                    QVERIFY2(e[i] <= e[i - 1] * (1.0 + 1e-10) + 1e-13,
                             qPrintable(QString("trial %1 order %2 step %3: %4 after %5").arg(trial).arg(order).arg(i).arg(e[i]).arg(e[i - 1])));
                QCOMPARE(rc_error(W.data_ptr<float>(), mask.data_ptr<bool>(), f), e.back());
                for (std::int64_t r = 0; r < rows; ++r) // outside the mask: no sign
                    for (std::int64_t c = 0; c < cols; ++c)
                        QCOMPARE(f.b1[static_cast<std::size_t>(r * cols + c)] == 0, !mask[r][c].item<bool>());
            }
        }
    }

    /// W = [[1, -2], [3, 4]], every weight in the group, order 1: B = sign(W) and a c^T is the
    /// best rank-one fit of |W| = [[1, 2], [3, 4]], whose error is its smaller squared singular
    /// value: 15 - sqrt(221) (|W|^T |W| = [[10, 14], [14, 20]]). The rounds converge to it.
    void arbRcHandWorked()
    {
        const float W[4] = {1.0f, -2.0f, 3.0f, 4.0f};
        const bool mask[4] = {true, true, true, true};
        std::vector<double> e;
        const RowColumnFit f = arb_rc_fit(W, mask, 2, 2, 1, kArbIterations, &e);
        QVERIFY2(std::abs(e.back() - (15.0 - std::sqrt(221.0))) < 1e-9, qPrintable(QString::number(e.back(), 'g', 12)));
        QCOMPARE(static_cast<int>(f.b1[1]), -1);
        // The start, as the authors' code has it: a = mean |w| per row = (1.5, 3.5);
        // c_j = mean_i |w_ij / a_i| = (1/1.5 + 3/3.5) / 2, (2/1.5 + 4/3.5) / 2.
        const RowColumnFit start = arb_rc_fit(W, mask, 2, 2, 1, 0);
        QCOMPARE(start.a[0], 1.5);
        QCOMPARE(start.a[1], 3.5);
        QVERIFY(std::abs(start.c[0] - (1.0 / 1.5 + 3.0 / 3.5) / 2.0) < 1e-15);
        QVERIFY(std::abs(start.c[1] - (2.0 / 1.5 + 4.0 / 3.5) / 2.0) < 1e-15);
    }

    /// CGB's salient split: the incremental search against re-binarization from scratch, with
    /// second-order sides.
    void cgbSearchMatchesReference()
    {
        const at::Tensor W = heavy_tailed_weights(7, 64, 4);
        const at::Tensor S = W.pow(2) * 50.0;
        for (const at::Tensor& V : {S, W}) {
            const BillmBlockChoice fast = billm_search_block(S, V, 49, true, false);
            const BillmBlockChoice ref = billm_search_block(S, V, 49, true, true);
            QCOMPARE(fast.salient_break_candidates, ref.salient_break_candidates);
            QCOMPARE(fast.salient_break_errors.size(), std::size_t(81));
            for (std::size_t t = 0; t < fast.salient_break_errors.size(); ++t)
                QVERIFY2(relative_gap(fast.salient_break_errors[t], ref.salient_break_errors[t]) < 1e-7,
                         qPrintable(QString("%1: %2 vs %3").arg(t).arg(fast.salient_break_errors[t]).arg(ref.salient_break_errors[t])));
            QCOMPARE(fast.salient_break_point, ref.salient_break_point);
            // The candidates are the 0.10 .. 0.90 quantiles (linear interpolation) of the
            // non-zero |S| at the salient columns only, recomputed here.
            std::vector<double> keys;
            for (int i = 0; i < fast.salient_columns; ++i)
                for (std::int64_t r = 0; r < S.size(0); ++r) {
                    const double v = std::abs(S[r][fast.column_order[static_cast<std::size_t>(i)]].item<float>());
                    if (v != 0.0)
                        keys.push_back(v);
                }
            std::sort(keys.begin(), keys.end());
            for (int t = 0; t < 81; ++t) {
                const double pos = (0.10 + 0.01 * t) * static_cast<double>(keys.size() - 1);
                const std::size_t lo = static_cast<std::size_t>(pos), hi = std::min(lo + 1, keys.size() - 1);
                const double expect = keys[lo] + (keys[hi] - keys[lo]) * (pos - static_cast<double>(lo));
                QVERIFY2(relative_gap(fast.salient_break_candidates[static_cast<std::size_t>(t)], expect) < 1e-6,
                         qPrintable(QString("%1: %2 vs %3").arg(t).arg(fast.salient_break_candidates[static_cast<std::size_t>(t)]).arg(expect)));
            }
        }
    }

    /// ARB-RC and ARB-X through quantize_linear: CGB splits salient columns too (the group bitmap
    /// marks salient weights), ARB-RC stores no means and per-column scales, and on weights with
    /// row and column structure ARB-RC's error is below ARB's; ARB-X's block error in the
    /// metric of H is below ARB's.
    void arbRcAndArbXOnTheirObjectives()
    {
        at::Generator g = at::detail::createCPUGenerator(31);
        const at::Tensor W = (at::normal(0.0, 1.0, {48, 128}, g) * (at::rand({48, 1}, g) + 0.2) *
                              (at::rand({1, 128}, g) * 3.0 + 0.2)).contiguous();
        const at::Tensor I = at::eye(128, at::kDouble);
        LayerQuantSettings arb, rc, x;
        arb.method = QuantMethod::Arb;
        rc.method = QuantMethod::ArbRc;
        x.method = QuantMethod::ArbX;
        for (LayerQuantSettings* s : {&arb, &rc, &x})
            s->block_binary.search = BillmSearch::Weights;
        GptqOptions o;
        const QuantizedLinear qa = quantize_linear("w", W, I, arb, o);
        const QuantizedLinear qr = quantize_linear("w", W, I, rc, o);
        QVERIFY2(qr.weight_error < 0.9 * qa.weight_error, qPrintable(QString("%1 vs %2").arg(qr.weight_error).arg(qa.weight_error)));
        const at::Tensor salient = qr.block_binary.salient_cols.unsqueeze(0).expand({48, 128});
        QVERIFY((qr.block_binary.sparse & salient).any().item<bool>());    // CGB
        QVERIFY((qr.block_binary.sparse & ~salient).any().item<bool>());
        QCOMPARE(qr.block_binary.params.size(2), std::int64_t(6));
        QCOMPARE(qr.block_binary.column_params.size(0), std::int64_t(128));
        // ARB-X on one block with a correlated H: tr(dW H dW^T) below ARB's.
        const at::Tensor H = correlated_hessian(128, 512, 12);
        o.blocksize = 128;
        const QuantizedLinear xa = quantize_linear("w", W, H, arb, o);
        const QuantizedLinear xx = quantize_linear("w", W, H, x, o);
        QVERIFY2(xx.output_error < xa.output_error, qPrintable(QString("%1 vs %2").arg(xx.output_error).arg(xa.output_error)));
        for (const QuantizedLinear* q : {&qr, &xx}) {
            const QuantizedLinear back = unpack_linear(pack_linear(*q), "round trip");
            QVERIFY(at::equal(back.dequantized, q->dequantized));
            QVERIFY(back.block_binary.layout == q->block_binary.layout);
        }
    }

    /// 8-bit scale codes: every code's value maps back to the code, 0 to 0, and any value within
    /// the 16 octaves below the base is stored within half a step (2^(1/32) - 1 = 2.2%).
    void log8ScaleCodes()
    {
        const float base = 0.37f;
        for (int k = 0; k < 256; ++k)
            QCOMPARE(static_cast<int>(log8_code(log8_value(base, static_cast<std::uint8_t>(k)), base)), k);
        QCOMPARE(log8_value(base, 255), base);
        QCOMPARE(log8_value(base, 239), base / 2.0f);
        QCOMPARE(static_cast<int>(log8_code(0.0f, base)), 0);
        QCOMPARE(static_cast<int>(log8_code(1e-12f, base)), 0); // nearer 0 than the smallest step
        at::Generator g = at::detail::createCPUGenerator(2);
        const at::Tensor v = at::exp2(at::rand({1000}, g) * -15.0) * base;
        for (std::int64_t i = 0; i < v.numel(); ++i) {
            const float x = v[i].item<float>();
            const float y = log8_value(base, log8_code(x, base));
            QVERIFY2(std::abs(y - x) <= x * (std::exp2(1.0 / 32.0) - 1.0) * 1.0001, qPrintable(QString("%1 -> %2").arg(x).arg(y)));
        }
    }

    /// The settings' table: every default reads back from its text, bad text names the setting
    /// and what it accepts, every key a method lists exists, a rule may set any setting per
    /// Linear (round trip through JSON), and a strict setting is refused for a method that does
    /// not read it and reset when the method is switched.
    void settingsTable()
    {
        for (const SettingInfo& s : layer_settings()) {
            const double d = s.default_value();
            QCOMPARE(s.parse(s.format(d)), d);
            s.check(d);
            QVERIFY(s.describe().find(s.format(d)) != std::string::npos);
        }
        for (const MethodInfo& m : methods())
            for (const char* key : m.settings)
                QVERIFY2(find_setting(key), key);
        auto refused = [](const char* key, const std::string& text, const std::string& expected) {
            try {
                setting(key).parse(text);
            } catch (const Error& e) {
                return std::string(e.what()) == expected;
            }
            return false;
        };
        QVERIFY(refused("salient_bits", "9", "salient bits 9 must be 2..8 or 16"));
        QVERIFY(refused("salient_bits", "4.5", "salient bits 4.5 must be 2..8 or 16"));
        QVERIFY(refused("salient_ratio", "abc", "salient ratio 'abc' is not a number"));
        QVERIFY(refused("salient_ratio", "1.25", "salient ratio 1.25 is outside [0, 1]"));
        QVERIFY(refused("binarizer", "xor", "binarizer 'xor' is not one of xnor, xnor-code, sign"));
        QVERIFY(refused("bits", "16", "bits 16 must be 2..8"));
        QCOMPARE(setting("method").format(setting("method").parse("arb-rc")), std::string("arb-rc"));

        QuantPlan plan;
        PlanRule mlp("*.mlp.*");
        mlp.set("method", setting("method").parse("arb-rc"))
            .set("scale_format", setting("scale_format").parse("log8"))
            .set("cgb", setting("cgb").parse("off"))
            .set("metric", setting("metric").parse("magnitude"));
        plan.rules.push_back(mlp);
        plan.rules.push_back(PlanRule("*.q_proj").set("salient_ratio", 0.25).set("binarizer", 2));
        plan.validate();
        const QuantPlan back = QuantPlan::from_json(plan.to_json(), "round trip");
        QCOMPARE(back.to_json(), plan.to_json());
        for (const char* name : {"model.layers.3.mlp.up_proj", "model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.v_proj"})
            for (const SettingInfo& s : layer_settings())
                QCOMPARE(s.get(back.settings_for(name)), s.get(plan.settings_for(name)));
        const LayerQuantSettings up = back.settings_for("model.layers.0.mlp.up_proj");
        QCOMPARE(static_cast<int>(up.block_binary.scale_format), static_cast<int>(ScaleFormat::Log8));
        QCOMPARE(static_cast<int>(up.metric), static_cast<int>(SaliencyMetric::Magnitude));
        QCOMPARE(static_cast<int>(back.settings_for("model.layers.0.self_attn.k_proj").block_binary.scale_format),
                 static_cast<int>(ScaleFormat::Fp16));
        QCOMPARE(back.settings_for("model.layers.0.self_attn.q_proj").salient_ratio, 0.25);
        QCOMPARE(static_cast<int>(back.settings_for("model.layers.0.self_attn.q_proj").binarizer),
                 static_cast<int>(Binarizer::Sign));

        // A rule's strict setting must be read by the method it sets, or by one of the plan's.
        QuantPlan strict;
        strict.rules.push_back(PlanRule("*.mlp.*").set("scale_format", 1));
        strict.rules.push_back(PlanRule("*.down_proj").set("method", setting("method").parse("billm")));
        auto refusal = [](const QuantPlan& p) {
            try {
                p.validate();
            } catch (const Error& e) {
                return std::string(e.what());
            }
            return std::string();
        };
        QCOMPARE(refusal(strict), std::string("rule '*.mlp.*': scale_format log8 is not read by any of pb-gptq, billm (only by arb-rc)"));
        strict.rules.push_back(PlanRule("*.up_proj").set("method", setting("method").parse("arb-rc")));
        QCOMPARE(refusal(strict), std::string()); // arb-rc's up_proj reads it; elsewhere it is the default
        QCOMPARE(static_cast<int>(strict.settings_for("model.layers.0.mlp.up_proj").block_binary.scale_format),
                 static_cast<int>(ScaleFormat::Log8));
        QCOMPARE(static_cast<int>(strict.settings_for("model.layers.0.mlp.down_proj").block_binary.scale_format),
                 static_cast<int>(ScaleFormat::Fp16));
        strict.rules.push_back(PlanRule("*.gate_proj").set("method", setting("method").parse("arb")).set("scale_format", 1));
        QCOMPARE(refusal(strict), std::string("rule '*.gate_proj': scale_format log8 is not read by arb (only by arb-rc)"));
        QuantPlan wide; // plan-wide, with no method of the plan reading it
        wide.config.layer.method = QuantMethod::Arb;
        wide.config.layer.block_binary.scale_format = ScaleFormat::Log8;
        QCOMPARE(refusal(wide), std::string("scale_format log8 is not read by arb (only by arb-rc)"));
        try {
            QuantPlan::from_json(R"({"method": "arb", "scale_format": "log8"})", "p.json");
            QFAIL("8-bit scales were accepted plan-wide for arb");
        } catch (const Error& e) {
            QCOMPARE(std::string(e.what()), std::string("p.json: scale_format log8 is not read by arb (only by arb-rc)"));
        }
        // A plan-wide one that no method reads is dropped when a plan of PB-LLM's methods is read
        // (stored plans from before the check) or its method switched; rules that read it keep it.
        QCOMPARE(static_cast<int>(QuantPlan::from_json(R"({"method": "pb-gptq", "scale_format": "log8"})", "p.json")
                                      .config.layer.block_binary.scale_format),
                 static_cast<int>(ScaleFormat::Fp16));
        QuantPlan switched_plan = QuantPlan::from_json(
            R"({"method": "arb-rc", "scale_format": "log8", "rules": [{"pattern": "*.mlp.*", "method": "arb-rc"}]})", "p.json");
        set_default_method(switched_plan, QuantMethod::PbGptq);
        QCOMPARE(static_cast<int>(switched_plan.settings_for("model.layers.0.mlp.up_proj").block_binary.scale_format),
                 static_cast<int>(ScaleFormat::Log8));
        switched_plan.rules.clear();
        drop_unread_strict_settings(switched_plan);
        QCOMPARE(static_cast<int>(switched_plan.config.layer.block_binary.scale_format), static_cast<int>(ScaleFormat::Fp16));
        // A plan-wide strict setting with a rule's method that reads it (as plans were written
        // when the block options were plan-wide): the other Linears get the default.
        const QuantPlan old_style = QuantPlan::from_json(
            R"({"method": "pb-gptq", "scale_format": "log8", "rules": [{"pattern": "*.mlp.*", "method": "arb-rc"}]})", "old.json");
        QCOMPARE(static_cast<int>(old_style.settings_for("model.layers.0.mlp.up_proj").block_binary.scale_format),
                 static_cast<int>(ScaleFormat::Log8));
        QCOMPARE(static_cast<int>(old_style.settings_for("model.layers.0.self_attn.q_proj").block_binary.scale_format),
                 static_cast<int>(ScaleFormat::Fp16));
        validate_for_method(old_style.settings_for("model.layers.0.self_attn.q_proj"));
        const LayerQuantSettings switched = with_method(up, QuantMethod::Arb);
        QCOMPARE(static_cast<int>(switched.block_binary.scale_format), static_cast<int>(ScaleFormat::Fp16));
        QCOMPARE(static_cast<int>(switched.block_binary.cgb), static_cast<int>(CgbChoice::Off)); // arb reads it
        QCOMPARE(static_cast<int>(switched.metric), static_cast<int>(SaliencyMetric::Magnitude));
    }

    /// The block-binary options: plans carry them (written only when set), the CGB choice
    /// overrides a preset either way, 8-bit scales shrink arb-rc's storage and round-trip bit for
    /// bit, and are refused with the reason for a method that stores signed means.
    void blockBinaryOptions()
    {
        const QuantPlan plan = QuantPlan::from_json(R"({"method": "arb-rc", "cgb": "off", "scale_format": "log8"})", "p.json");
        QCOMPARE(static_cast<int>(plan.config.layer.block_binary.cgb), static_cast<int>(CgbChoice::Off));
        QCOMPARE(static_cast<int>(plan.config.layer.block_binary.scale_format), static_cast<int>(ScaleFormat::Log8));
        QCOMPARE(QuantPlan::from_json(plan.to_json(), "again").to_json(), plan.to_json());
        for (const SettingInfo& o : layer_settings()) {
            QVERIFY(find_setting(o.key) == &o && find_setting(o.flag) == &o);
            if (o.omit_default)
                QVERIFY(QuantPlan{}.to_json().find(o.key) == std::string::npos);
        }
        try {
            QuantPlan::from_json(R"({"rules": [{"pattern": "*", "method": "billm", "scale_format": "log8"}]})", "p.json");
            QFAIL("8-bit scales were accepted for billm");
        } catch (const Error& e) {
            QVERIFY2(std::string(e.what()).find("rule '*': scale_format log8 is not read by billm (only by arb-rc)") !=
                         std::string::npos,
                     e.what());
        }
        try {
            QuantPlan::from_json(R"({"cgb": "sometimes"})", "p.json");
            QFAIL("a bad choice was accepted");
        } catch (const Error& e) {
            QVERIFY2(std::string(e.what()).find("preset, on, off") != std::string::npos, e.what());
        }

        const at::Tensor W = heavy_tailed_weights(16, 96, 6);
        const at::Tensor H = correlated_hessian(96);
        LayerQuantSettings rc, arb;
        rc.method = QuantMethod::ArbRc;
        arb.method = QuantMethod::Arb;
        GptqOptions o;
        o.blocksize = 48;
        const QuantizedLinear fp16 = quantize_linear("w", W, H, rc, o);
        LayerQuantSettings arb_on = arb, rc_off = rc, rc_log8 = rc;
        arb_on.block_binary.cgb = CgbChoice::On;
        rc_off.block_binary.cgb = CgbChoice::Off;
        rc_log8.block_binary.scale_format = ScaleFormat::Log8;
        const at::Tensor salient = fp16.block_binary.salient_cols.unsqueeze(0).expand({16, 96});
        QVERIFY((fp16.block_binary.sparse & salient).any().item<bool>()); // the preset: on
        const QuantizedLinear no_cgb = quantize_linear("w", W, H, rc_off, o);
        QVERIFY(!(no_cgb.block_binary.sparse & no_cgb.block_binary.salient_cols.unsqueeze(0)).any().item<bool>());
        QCOMPARE(no_cgb.block_binary.params.size(2), std::int64_t(4));
        const QuantizedLinear arb_cgb = quantize_linear("w", W, H, arb_on, o);
        QCOMPARE(arb_cgb.block_binary.params.size(2), std::int64_t(12));
        QVERIFY((arb_cgb.block_binary.sparse & arb_cgb.block_binary.salient_cols.unsqueeze(0)).any().item<bool>());

        const QuantizedLinear small = quantize_linear("w", W, H, rc_log8, o);
        const PackedLinear p16 = pack_linear(fp16), p8 = pack_linear(small);
        QVERIFY(p8.block_params.empty() && p8.column_params.empty());
        // One byte per scale: 6 per row and block, 2 per column and 2 more per salient column;
        // two float bases per block; signs, second-order signs, the group bitmap over every
        // weight (CGB) and the column bitmap as before.
        const std::int64_t n = 16 * 96, salient_columns = p8.salient_count / 16;
        QCOMPARE(static_cast<std::int64_t>(p8.scale_codes.size()), 16 * 2 * 6 + 2 * 96 + 2 * salient_columns);
        QCOMPARE(p8.bytes(), (n + 7) / 8 + (p8.salient_count + 7) / 8 + (n + 7) / 8 + (96 + 7) / 8 +
                                 static_cast<std::int64_t>(p8.scale_codes.size()) + 2 * 2 * 4);
        QVERIFY2(small.weight_error < fp16.weight_error * 1.05,
                 qPrintable(QString("log8 %1 vs fp16 %2").arg(small.weight_error).arg(fp16.weight_error)));
        const QuantizedLinear back = unpack_linear(p8, "log8");
        QVERIFY(at::equal(back.dequantized, small.dequantized));
        QVERIFY(back.block_binary.layout == small.block_binary.layout && back.block_binary.layout.log8_scales);
        for (const QuantizedLinear* q : {&no_cgb, &arb_cgb}) {
            const QuantizedLinear again = unpack_linear(pack_linear(*q), "round trip");
            QVERIFY(at::equal(again.dequantized, q->dequantized));
        }
        try {
            LayerQuantSettings arb_log8 = arb;
            arb_log8.block_binary.scale_format = ScaleFormat::Log8;
            quantize_linear("model.layers.0.mlp.up_proj", W, H, arb_log8, o);
            QFAIL("8-bit scales were accepted for arb");
        } catch (const Error& e) {
            QVERIFY2(std::string(e.what()).find("model.layers.0.mlp.up_proj: scale_format log8 is not read by arb") !=
                         std::string::npos,
                     e.what());
        }
        PackedLinear bad = p8;
        bad.scale_bases[0] = -1.0f;
        try {
            unpack_linear(bad, "f: w");
            QFAIL("a negative base was accepted");
        } catch (const Error& e) {
            QVERIFY2(std::string(e.what()).find("base") != std::string::npos, e.what());
        }
        bad = p8;
        bad.scale_codes.pop_back();
        try {
            unpack_linear(bad, "f: w");
            QFAIL("a missing code was accepted");
        } catch (const Error& e) {
            QVERIFY2(std::string(e.what()).find("8-bit scale codes") != std::string::npos, e.what());
        }
    }

    /// Through a file: a model quantized with arb-rc (8-bit scales, CGB off) and one mixing arb-x
    /// with a billm rule are written and read back with every Linear bit-identical and its
    /// layout (the cgb and scale_format attributes) intact.
    void blockBinaryFileRoundTrip()
    {
        const Model m = make_synthetic_model(small_family_config("llama"), 4);
        std::vector<std::vector<int>> windows(4, std::vector<int>(32));
        for (std::size_t w = 0; w < windows.size(); ++w)
            for (std::size_t t = 0; t < 32; ++t)
                windows[w][t] = static_cast<int>((w * 37 + t * 11) % static_cast<std::size_t>(m.config.vocab_size));
        QuantPlan rc, mixed;
        rc.config.layer.method = QuantMethod::ArbRc;
        rc.config.layer.block_binary.scale_format = ScaleFormat::Log8;
        rc.config.layer.block_binary.cgb = CgbChoice::Off;
        mixed.config.layer.method = QuantMethod::ArbX;
        mixed.rules.push_back(PlanRule("*.mlp.*").set("method", setting("method").parse("billm")));
        QTemporaryDir tmp;
        for (const QuantPlan* plan : {&rc, &mixed}) {
            const QuantizedModel q = quantize_model(m, windows, *plan);
            const std::string path = tmp.filePath("m.pbllm.h5").toStdString();
            write_packed_checkpoint(q, path);
            const PackedCheckpoint back = read_packed_checkpoint(path);
            QCOMPARE(back.quantized.linears.size(), q.linears.size());
            for (std::size_t i = 0; i < q.linears.size(); ++i) {
                const QuantizedLinear& a = q.linears[i];
                const QuantizedLinear& b = back.quantized.linears[i];
                QCOMPARE(b.name, a.name);
                QCOMPARE(static_cast<int>(b.settings.method), static_cast<int>(a.settings.method));
                QVERIFY2(b.block_binary.layout == a.block_binary.layout, a.name.c_str());
                QVERIFY2(at::equal(b.dequantized, a.dequantized), a.name.c_str());
            }
            QFile::remove(QString::fromStdString(path));
        }
    }

    /// A 4 x 8 example worked by hand for each block binarizer. Row r (scale s = 1, 2, 0.5, 4)
    /// holds 8s and -6s in columns 0 and 1 and +-s (three of each) elsewhere; H = I, the search
    /// on W. With k = 1 salient column the rest {-6s, +-s} has three levels and BiLLM's
    /// second-order fit leaves residuals -174/49 s, 13/49 s and 71/49 s (an error); with k = 2
    /// the salient pair is fitted exactly at order 1 (mu = s, alpha = 7s, nothing left for order
    /// 2) and the rest at mu = 0, alpha = s, so k = 2 is the first minimum and every group is
    /// exact. ARB's rounds and ARB-X's (in H = I's metric) start at the optimum and keep it.
    /// ARB-RC's groups are rank one in magnitude (s times 8, 6 or 1), so row times column scales
    /// fit them exactly up to the FP16 rounding of scales such as 8/7 and 6/7 (0.1%).
    void handWorked4x8()
    {
        const float scale[4] = {1.0f, 2.0f, 0.5f, 4.0f};
        const float pattern[4][6] = {{1, -1, 1, -1, 1, -1}, {-1, -1, -1, 1, 1, 1}, {1, 1, -1, -1, 1, -1}, {-1, 1, 1, -1, -1, 1}};
        at::Tensor W = at::empty({4, 8}, at::kFloat);
        for (int r = 0; r < 4; ++r) {
            W[r][0] = 8.0f * scale[r];
            W[r][1] = -6.0f * scale[r];
            for (int c = 0; c < 6; ++c)
                W[r][c + 2] = pattern[r][c] * scale[r];
        }
        GptqOptions o;
        o.blocksize = 8;
        for (QuantMethod m : {QuantMethod::Billm, QuantMethod::Arb, QuantMethod::ArbX, QuantMethod::ArbRc}) {
            LayerQuantSettings s;
            s.method = m;
            s.block_binary.search = BillmSearch::Weights;
            const QuantizedLinear q = quantize_linear("w", W, at::eye(8, at::kDouble), s, o);
            const std::string name = to_string(m);
            QVERIFY2(at::equal(q.block_binary.salient_cols, at::tensor({1, 1, 0, 0, 0, 0, 0, 0}).to(at::kBool)), name.c_str());
            const double worst = ((q.dequantized - W).abs() / W.abs()).max().item<double>();
            QVERIFY2(worst <= (m == QuantMethod::ArbRc ? 1e-3 : 0.0), qPrintable(QString("%1: %2").arg(name.c_str()).arg(worst)));
            if (m == QuantMethod::Billm) // the parameters as worked above, per row
                for (int r = 0; r < 4; ++r) {
                    const at::Tensor p = q.block_binary.params[r][0];
                    QCOMPARE(p[kSalientMu1].item<float>(), scale[r]);
                    QCOMPARE(p[kSalientAlpha1].item<float>(), 7.0f * scale[r]);
                    QCOMPARE(p[kSalientAlpha2].item<float>(), 0.0f);
                    // the +-s weights share |S|, so they sit on one side of the break point
                    const int side = q.block_binary.sparse[r][2].item<bool>() ? kSparseAlpha : kConcentratedAlpha;
                    QCOMPARE(p[side].item<float>(), scale[r]);
                    QCOMPARE(p[side + 1].item<float>(), 0.0f);
                }
        }
    }

    void billmRefusesWhatItCannotDo()
    {
        LayerQuantSettings s;
        s.method = QuantMethod::Billm;
        const at::Tensor W = at::randn({4, 16});
        auto refused = [&](const at::Tensor& H, const GptqOptions& o, const char* expect) {
            try {
                quantize_linear("model.layers.1.mlp.up_proj", W, H, s, o);
            } catch (const Error& e) {
                const std::string what = e.what();
                return what.find("model.layers.1.mlp.up_proj") != std::string::npos && what.find(expect) != std::string::npos;
            }
            return false;
        };
        QVERIFY(refused(at::Tensor(), GptqOptions{}, "calibration"));
        GptqOptions act;
        act.act_order = true;
        QVERIFY(refused(at::eye(16, at::kDouble), act, "act-order"));
        GptqOptions grouped;
        grouped.groupsize = 128;
        QVERIFY(refused(at::eye(16, at::kDouble), grouped, "group size"));
        at::Tensor bad = W.clone();
        bad[0][0] = NAN;
        try {
            quantize_linear("w", bad, at::eye(16, at::kDouble), s, GptqOptions{});
            QFAIL("NaN weights were quantized");
        } catch (const Error& e) {
            QVERIFY(std::string(e.what()).find("NaN") != std::string::npos);
        }
    }

    /// A packed BiLLM Linear whose arrays disagree is refused with the reason.
    void billmPackedFieldsValidated()
    {
        LayerQuantSettings s;
        s.method = QuantMethod::Billm;
        GptqOptions o;
        o.blocksize = 16;
        const QuantizedLinear q = quantize_linear("w", at::randn({5, 40}), correlated_hessian(40), s, o);
        const PackedLinear good = pack_linear(q);
        // Storage: signs for all, second order for salient, the group bitmap for the rest, 8 FP16
        // per row and block, and the column bitmap.
        const std::int64_t n = 200, salient = good.salient_count;
        QCOMPARE(good.bytes(), (n + 7) / 8 + (salient + 7) / 8 + (n - salient + 7) / 8 + 5 * 3 * 8 * 2 + (40 + 7) / 8);
        auto refused = [&](PackedLinear p, const char* expect) {
            try {
                unpack_linear(p, "f.pbllm.h5: w");
            } catch (const Error& e) {
                return std::string(e.what()).find(expect) != std::string::npos;
            }
            return false;
        };
        PackedLinear p = good;
        p.column_bitmap[0] ^= 1u; // one salient column more or less
        QVERIFY(refused(p, "salient count"));
        p = good;
        p.signs.pop_back();
        QVERIFY(refused(p, "signs"));
        p = good;
        p.block_params[kSalientAlpha1] = 0xBC00; // -1.0
        QVERIFY(refused(p, "negative"));
        p = good;
        p.block_params[kConcentratedMu] = 0x7E00; // NaN
        QVERIFY(refused(p, "not finite"));
        p = good;
        p.block = 0;
        QVERIFY(refused(p, "block size"));
        // ARB-RC: the group bitmap covers every weight (CGB), 6 FP16 row scales per row and
        // block, and per column 2 scales (4 at salient columns); a missing or negative one is refused.
        s.method = QuantMethod::ArbRc;
        const PackedLinear rc = pack_linear(quantize_linear("w", at::randn({5, 40}), correlated_hessian(40), s, o));
        const std::int64_t salient_columns = rc.salient_count / 5;
        QCOMPARE(rc.bytes(), (n + 7) / 8 + (rc.salient_count + 7) / 8 + (n + 7) / 8 + 5 * 3 * 6 * 2 +
                                 2 * (2 * 40 + 2 * salient_columns) + (40 + 7) / 8);
        p = rc;
        p.column_params.pop_back();
        QVERIFY(refused(p, "column parameters"));
        p = rc;
        p.column_params[0] = 0xBC00;
        QVERIFY(refused(p, "negative"));
        p = rc;
        p.group_bitmap.pop_back();
        QVERIFY(refused(p, "group bitmap"));
    }

    void planCarriesBillmSettings()
    {
        const QuantPlan plan = QuantPlan::from_json(
            R"({"method": "pb-gptq", "billm_search": "weights", "rules": [{"pattern": "*.mlp.*", "method": "billm"}]})", "p.json");
        QCOMPARE(static_cast<int>(plan.config.layer.block_binary.search), static_cast<int>(BillmSearch::Weights));
        QCOMPARE(static_cast<int>(QuantPlan::from_json(R"({"billm_compensation": "exact"})", "p.json").config.layer.block_binary.compensation),
                 static_cast<int>(BillmCompensation::Exact));
        QCOMPARE(static_cast<int>(plan.settings_for("model.layers.0.mlp.up_proj").method), static_cast<int>(QuantMethod::Billm));
        QCOMPARE(static_cast<int>(plan.settings_for("model.layers.0.self_attn.q_proj").method),
                 static_cast<int>(QuantMethod::PbGptq));
        const QuantPlan again = QuantPlan::from_json(plan.to_json(), "again");
        QCOMPARE(again.to_json(), plan.to_json());
        // The default search is not written, so plans without BiLLM stay as they were.
        QVERIFY(QuantPlan{}.to_json().find("billm") == std::string::npos);
        // What BiLLM cannot run with is refused when the plan is read, not mid-run.
        for (const char* bad : {R"({"act_order": true, "rules": [{"pattern": "*", "method": "billm"}]})",
                                R"({"method": "billm", "groupsize": 128})", R"({"method": "billm", "blocksize": 1})"}) {
            try {
                QuantPlan::from_json(bad, "p.json");
                QFAIL(bad);
            } catch (const Error& e) {
                QVERIFY2(std::string(e.what()).find("billm") != std::string::npos, e.what());
            }
        }
        try {
            QuantPlan::from_json(R"({"billm_search": "both"})", "p.json");
            QFAIL("a bad search was accepted");
        } catch (const Error& e) {
            QVERIFY2(std::string(e.what()).find("billm_search") != std::string::npos, e.what());
        }
    }
};

QTEST_GUILESS_MAIN(TestMethods)
#include "tst_methods.moc"
