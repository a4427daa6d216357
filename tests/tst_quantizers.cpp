// The element quantizers, thresholds, bit codecs and the QuantPlan, each against an independent
// scalar computation or a round trip.
#include "core/bitpack.h"
#include "core/error.h"
#include "core/quant_config.h"
#include "core/quantizers.h"
#include "core/saliency.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <QtTest>

#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <random>

using namespace pbllm;
using namespace pbllm::test;

class TestQuantizers : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void rowGridMatchesDefinition()
    {
        const at::Tensor W = at::randn({6, 40}) * 0.1 + 0.02;
        for (int bits : {2, 4, 8}) {
            const RowGrid g = fit_row_grid(W, bits);
            const int maxq = (1 << bits) - 1;
            for (int r = 0; r < 6; ++r) {
                const double xmin = std::min(0.0, W[r].min().item<double>()), xmax = std::max(0.0, W[r].max().item<double>());
                const float scale = round_to_fp16(static_cast<float>((xmax - xmin) / maxq));
                QCOMPARE(g.scale[r][0].item<float>(), scale);
                QCOMPARE(g.zero[r][0].item<float>(), static_cast<float>(std::nearbyint(-xmin / scale)));
                // Every grid value is within half a step of its weight, except clamped extremes.
                for (int c = 0; c < 40; ++c) {
                    const float w = W[r][c].item<float>();
                    const int code = grid_code(w, scale, g.zero[r][0].item<float>(), maxq);
                    QVERIFY(code >= 0 && code <= maxq);
                    QVERIFY(std::abs(grid_value(code, scale, g.zero[r][0].item<float>()) - w) <= 0.5f * scale * 1.001f + 1e-3f);
                }
            }
        }
        // An all-zero row gets a usable grid that maps 0 to 0.
        const RowGrid z = fit_row_grid(at::zeros({1, 8}), 8);
        QVERIFY(z.scale[0][0].item<float>() > 0);
        QCOMPARE(grid_value(grid_code(0.0f, z.scale[0][0].item<float>(), z.zero[0][0].item<float>(), 255),
                            z.scale[0][0].item<float>(), z.zero[0][0].item<float>()), 0.0f);
    }

    void binaryStatsMatchScalarReference_data()
    {
        QTest::addColumn<int>("binarizer");
        QTest::newRow("xnor") << static_cast<int>(Binarizer::Xnor);
        QTest::newRow("xnor-code") << static_cast<int>(Binarizer::XnorCode);
        QTest::newRow("sign") << static_cast<int>(Binarizer::Sign);
    }

    void binaryStatsMatchScalarReference()
    {
        QFETCH(int, binarizer);
        const Binarizer b = static_cast<Binarizer>(binarizer);
        at::Generator g = at::detail::createCPUGenerator(11);
        const at::Tensor W = at::normal(0.0, 1.0, {5, 32}, g) + 0.3;
        const at::Tensor mask = at::rand({5, 32}, g) < 0.2;
        const BinaryStats s = fit_binary_stats(W, mask, b);
        for (int r = 0; r < 5; ++r) {
            double sum = 0, n = 0;
            for (int c = 0; c < 32; ++c)
                if (!mask[r][c].item<bool>()) {
                    sum += W[r][c].item<double>();
                    ++n;
                }
            double mu = b == Binarizer::Xnor ? sum / n : b == Binarizer::XnorCode ? sum / 32.0 : 0.0;
            double dev = 0;
            for (int c = 0; c < 32; ++c) {
                const bool salient = mask[r][c].item<bool>();
                const double w = salient ? 0.0 : W[r][c].item<double>();
                if (b == Binarizer::XnorCode)
                    dev += std::abs(w - mu);
                else if (!salient)
                    dev += std::abs(W[r][c].item<double>() - mu);
            }
            const double alpha = b == Binarizer::XnorCode ? dev / 32.0 : dev / n;
            // The float32 sum and this float64 one may round to neighbouring FP16 values when mu
            // sits near a rounding boundary: one FP16 step apart at most.
            QVERIFY2(std::abs(s.mu[r][0].item<float>() - round_to_fp16(static_cast<float>(mu))) <= std::abs(mu) / 1024.0 + 6e-8,
                     qPrintable(QString("%1 vs %2").arg(s.mu[r][0].item<float>()).arg(mu)));
            QVERIFY2(std::abs(s.alpha[r][0].item<float>() - alpha) <= 1e-3 * alpha + 1e-6, qPrintable(QString::number(alpha)));
        }
    }

    void roundHalfEvenMatchesNearbyint()
    {
        std::mt19937 rng(9);
        std::uniform_real_distribution<float> u(-600.0f, 600.0f);
        for (float v : {0.5f, 1.5f, 2.5f, -0.5f, -2.5f, 254.5f, 255.5f, 0.49999997f, 4194303.5f, 1e9f, -0.0f})
            QCOMPARE(round_half_even(v), std::nearbyint(v));
        for (int i = 0; i < 100000; ++i) {
            const float v = u(rng);
            QCOMPARE(round_half_even(v), std::nearbyint(v));
        }
    }

    void roundToFp16MatchesHalfConversion()
    {
        // Against c10::Half's conversion, bit for bit: every float exponent from below the FP16
        // subnormals to beyond its overflow, with random mantissas, exact ties and edge values.
        auto via_half = [](float v) { return static_cast<float>(c10::Half(v)); };
        auto same = [](float a, float b) { return std::memcmp(&a, &b, 4) == 0 || (std::isnan(a) && std::isnan(b)); };
        std::mt19937 rng(11);
        for (int e = -30; e <= 20; ++e)
            for (int i = 0; i < 4000; ++i) {
                const float v = std::ldexp(1.0f + static_cast<float>(rng() & 0x7FFFFF) / 8388608.0f, e) * (i % 2 ? -1.0f : 1.0f);
                QVERIFY2(same(round_to_fp16(v), via_half(v)), qPrintable(QString::number(static_cast<double>(v), 'g', 9)));
            }
        for (float v : {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e10f, INFINITY, -INFINITY, NAN,
                        6.103515625e-05f, 6.1e-05f, 5.960464477539063e-08f, 2.98023224e-08f, 2.98023259e-08f,
                        1.0f + 1.0f / 2048.0f, 1.0f + 3.0f / 2048.0f})
            QVERIFY2(same(round_to_fp16(v), via_half(v)), qPrintable(QString::number(static_cast<double>(v), 'g', 9)));
    }

    void xnorScaleIsOptimal()
    {
        // For fixed signs, alpha* = mean |w - mu| minimises ||w - mu - alpha sign(w - mu)||^2.
        const at::Tensor W = at::randn({1, 500});
        const BinaryStats s = fit_binary_stats(W, at::zeros({1, 500}, at::kBool), Binarizer::Xnor);
        const float mu = s.mu[0][0].item<float>(), alpha = s.alpha[0][0].item<float>();
        auto err = [&](float a) {
            double e = 0;
            for (int c = 0; c < 500; ++c) {
                const float w = W[0][c].item<float>();
                e += std::pow(w - binary_value(binary_sign(w, mu), mu, a), 2);
            }
            return e;
        };
        QVERIFY(err(alpha) < err(alpha * 1.05f));
        QVERIFY(err(alpha) < err(alpha * 0.95f));
        QVERIFY(binary_sign(0.5f, 0.5f)); // sign(0) = +1
    }

    void kthLargestMatchesNthElement()
    {
        std::mt19937 rng(1);
        for (int trial = 0; trial < 20; ++trial) {
            const int n = 1 + static_cast<int>(rng() % 5000);
            std::vector<float> v(n);
            for (float& x : v)
                x = trial % 3 == 0 ? static_cast<float>(rng() % 7) : std::abs(std::normal_distribution<float>()(rng)) * 1e-3f;
            const std::int64_t k = rng() % n;
            std::vector<float> sorted = v;
            std::nth_element(sorted.begin(), sorted.begin() + k, sorted.end(), std::greater<float>());
            QCOMPARE(kth_largest_nonnegative(v.data(), n, k), sorted[k]);
        }
    }

    void salientMaskRatio()
    {
        const at::Tensor scores = at::rand({64, 100});
        for (double r : {0.0, 0.05, 0.1, 0.5, 1.0}) {
            const at::Tensor m = salient_mask(scores, r);
            QCOMPARE(m.sum().item<std::int64_t>(), static_cast<std::int64_t>(std::floor(r * 6400)));
            if (r > 0 && r < 1) // every salient score beats every other
                QVERIFY(scores.masked_select(m).min().item<float>() > scores.masked_select(~m).max().item<float>());
        }
        // Ties at the threshold can only make the set smaller.
        const at::Tensor ties = at::ones({10, 10});
        QCOMPARE(salient_mask(ties, 0.3).sum().item<std::int64_t>(), std::int64_t(0));
        // Groups: each block of columns gets its own top fraction.
        at::Tensor grouped = at::rand({8, 256});
        grouped.narrow(1, 0, 128).mul_(100.0); // the first group dominates globally
        const at::Tensor gm = salient_mask(grouped, 0.25, 128);
        QCOMPARE(gm.narrow(1, 0, 128).sum().item<std::int64_t>(), std::int64_t(256));
        QCOMPARE(gm.narrow(1, 128, 128).sum().item<std::int64_t>(), std::int64_t(256));
    }

    void bitStreamsRoundTrip()
    {
        BitWriter w;
        std::mt19937_64 rng(3);
        std::vector<std::pair<std::uint64_t, int>> values;
        for (int i = 0; i < 1000; ++i) {
            const int bits = 1 + static_cast<int>(rng() % 16);
            values.emplace_back(rng() & ((1u << bits) - 1), bits);
            w.put(values.back().first, bits);
        }
        const std::vector<std::uint8_t> bytes = w.take();
        BitReader r(bytes.data(), bytes.size(), "test");
        for (const auto& [v, bits] : values)
            QCOMPARE(r.get(bits), v);
        QVERIFY_THROWS_EXCEPTION(Error, r.get(16));
    }

    void sparseIndexRoundTrip_data()
    {
        QTest::addColumn<double>("ratio");
        QTest::addColumn<QString>("encoding");
        QTest::newRow("none") << 0.0 << "rice";
        QTest::newRow("1%") << 0.01 << "rice";
        QTest::newRow("10%") << 0.1 << "rice";
        QTest::newRow("50%") << 0.5 << "bitmap";
        QTest::newRow("all") << 1.0 << "all";
    }

    void sparseIndexRoundTrip()
    {
        QFETCH(double, ratio);
        QFETCH(QString, encoding);
        const std::int64_t n = 200000;
        std::mt19937 rng(5);
        std::vector<char> mask(n);
        std::int64_t count = 0;
        for (auto& m : mask)
            count += (m = std::bernoulli_distribution(ratio)(rng));
        const EncodedIndex e = encode_index(reinterpret_cast<const bool*>(mask.data()), n);
        QCOMPARE(QString::fromStdString(to_string(e.encoding)), encoding);
        const std::vector<bool> back = decode_index(e, n, count, "test");
        for (std::int64_t i = 0; i < n; ++i)
            QCOMPARE(static_cast<bool>(back[i]), static_cast<bool>(mask[i]));
        if (e.encoding == IndexEncoding::Rice && count > 0) {
            // Close to the analytic expectation (and so to the mask's entropy).
            const double measured = 8.0 * e.bytes.size() / n;
            QVERIFY2(std::abs(measured - expected_index_bits_per_weight(ratio)) < 0.02, qPrintable(QString::number(measured)));
        }
        if (count > 0)
            QVERIFY_THROWS_EXCEPTION(Error, decode_index(e, n, count + 1, "test"));
    }

    void corruptIndexIsRejected()
    {
        std::vector<char> mask(1000, 0);
        mask[10] = mask[500] = mask[999] = 1;
        EncodedIndex e = encode_index(reinterpret_cast<const bool*>(mask.data()), 1000);
        try {
            decode_index(e, 600, 3, "layer X"); // positions past the end
            QFAIL("index past the end accepted");
        } catch (const Error& err) {
            QVERIFY2(QString(err.what()).startsWith("layer X"), err.what());
        }
        e.bytes.resize(1);
        QVERIFY_THROWS_EXCEPTION(Error, decode_index(e, 1000, 3, "layer X"));
    }

    void globAndPlanRules()
    {
        QVERIFY(glob_match("model.layers.*.mlp.down_proj", "model.layers.12.mlp.down_proj"));
        QVERIFY(glob_match("*q_proj", "model.layers.0.self_attn.q_proj"));
        QVERIFY(glob_match("model.layers.?.mlp.*", "model.layers.3.mlp.up_proj"));
        QVERIFY(!glob_match("model.layers.?.mlp.*", "model.layers.13.mlp.up_proj"));
        QVERIFY(!glob_match("*.k_proj", "model.layers.0.self_attn.q_proj"));

        const QuantPlan plan = QuantPlan::from_json(R"({
            "salient_ratio": 0.2, "binarizer": "sign",
            "rules": [{"pattern": "model.layers.0.mlp.down_proj", "salient_ratio": 0.3},
                      {"pattern": "*.v_proj", "salient_bits": 4, "metric": "magnitude"},
                      {"pattern": "model.layers.1.*", "skip": true}]})", "plan.json");
        QCOMPARE(plan.settings_for("model.layers.0.mlp.down_proj").salient_ratio, 0.3);
        QCOMPARE(plan.settings_for("model.layers.0.mlp.up_proj").salient_ratio, 0.2);
        QCOMPARE(plan.settings_for("model.layers.0.mlp.up_proj").binarizer, Binarizer::Sign);
        QCOMPARE(plan.settings_for("model.layers.2.self_attn.v_proj").salient_bits, 4);
        QCOMPARE(plan.settings_for("model.layers.2.self_attn.v_proj").metric, SaliencyMetric::Magnitude);
        QVERIFY(plan.settings_for("model.layers.1.self_attn.q_proj").skip);
        // JSON round trip keeps every decision.
        const QuantPlan back = QuantPlan::from_json(plan.to_json(), "round trip");
        for (const char* name : {"model.layers.0.mlp.down_proj", "model.layers.2.self_attn.v_proj", "model.layers.1.mlp.gate_proj"}) {
            const LayerQuantSettings a = plan.settings_for(name), b = back.settings_for(name);
            QCOMPARE(a.salient_ratio, b.salient_ratio);
            QCOMPARE(a.salient_bits, b.salient_bits);
            QCOMPARE(a.metric, b.metric);
            QCOMPARE(a.skip, b.skip);
        }
    }

    void planRejectsBadInput_data()
    {
        QTest::addColumn<QString>("json");
        QTest::addColumn<QString>("expected");
        QTest::newRow("not JSON") << "{" << "plan.json: not a JSON object";
        QTest::newRow("unknown key") << R"({"salient": 0.1})" << "key 'salient' is unknown";
        QTest::newRow("ratio above one") << R"({"salient_ratio": 1.5})" << "salient ratio 1.5 is outside [0, 1]";
        QTest::newRow("bad metric") << R"({"metric": "entropy"})" << "metric 'entropy' is not one of";
        QTest::newRow("bits 9") << R"({"salient_bits": 9})" << "salient bits 9 must be 2..8 or 16";
        QTest::newRow("groupsize") << R"({"groupsize": 100})" << "groupsize 100 must be 0 or a multiple of the blocksize 128";
        QTest::newRow("rule field") << R"({"rules": [{"pattern": "*", "ratio": 0.2}]})" << "key 'ratio' is not a rule field";
        QTest::newRow("rule ratio") << R"({"rules": [{"pattern": "*", "salient_ratio": -0.1}]})" << "rule '*': salient ratio";
        QTest::newRow("ratio as text") << R"({"salient_ratio": "0.1"})" << "key 'salient_ratio' must be a number";
    }

    void planRejectsBadInput()
    {
        QFETCH(QString, json);
        QFETCH(QString, expected);
        try {
            QuantPlan::from_json(json.toStdString(), "plan.json");
            QFAIL("bad plan accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains(expected), e.what());
            QVERIFY2(QString(e.what()).startsWith("plan.json"), e.what());
        }
    }
};

QTEST_GUILESS_MAIN(TestQuantizers)
#include "tst_quantizers.moc"
