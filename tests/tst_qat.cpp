// PB-LLM QAT: the straight-through gradient, frozen salient weights, the closed-form scale,
// learning on a tiny overfitting run, resume = uninterrupted, and export/reload equality.
#include "core/calibration.h"
#include "core/error.h"
#include "core/evaluation.h"
#include "core/llama.h"
#include "core/packed_checkpoint.h"
#include "core/qat.h"
#include "core/tokenizer.h"
#include "tests/support/test_support.h"

#include <QTemporaryDir>
#include <QtTest>
#include <torch/torch.h>

using namespace pbllm;
using namespace pbllm::test;

namespace {

const std::vector<int>& train_tokens() { return tinystories_train_tokens(); }

QatSettings tiny(int steps)
{
    QatSettings s;
    s.steps = steps;
    s.batch = 1;
    s.accum = 2;
    s.seqlen = 64;
    s.lr = 1e-3;
    s.warmup = 0.0;
    return s;
}

} // namespace

class TestQat : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void straightThroughIsIdentity_data()
    {
        QTest::addColumn<bool>("clip");
        QTest::newRow("identity") << false;
        QTest::newRow("clipped at |w| <= 1") << true;
    }

    void straightThroughIsIdentity()
    {
        QFETCH(bool, clip);
        PbTrainLinear t = make_train_linear_magnitude("w", at::randn({8, 32}) * 0.8, 0.2, 8);
        const at::Tensor G = at::randn({8, 32});
        (t.effective(Binarizer::Xnor, false, clip) * G).sum().backward();
        const at::Tensor expected = at::where(t.salient, at::zeros_like(G),
                                              clip ? G * (t.latent.detach().abs() <= 1.0).to(at::kFloat) : G);
        QVERIFY(at::equal(t.latent.grad(), expected));
    }

    void gradientMatchesFiniteDifferences()
    {
        // The gradient the STE passes on is dL/dW_eff: check it against central differences of the
        // model loss in the effective weights (no sign flips involved).
        const Model& m = stories260k();
        PbTrainLinear t = make_train_linear_magnitude("q", m.layers[1].weight(LinearKind::Up), 0.1, 8);
        const at::Tensor ids = at::tensor(std::vector<std::int64_t>(train_tokens().begin(), train_tokens().begin() + 33)).view({1, 33});
        const RopeTables rope = make_rope_tables(m.config, 33);
        auto loss_of = [&](const at::Tensor& w_up) {
            Model mm = m;
            mm.layers[1].weight(LinearKind::Up) = w_up;
            at::Tensor x = embed_tokens(mm, ids.narrow(1, 0, 32));
            for (const DecoderLayer& l : mm.layers)
                x = decoder_layer_forward(mm.config, l, x, rope);
            const at::Tensor logp = at::log_softmax(output_logits(mm, x), -1);
            return at::nll_loss(logp.reshape({-1, 512}).to(at::kDouble), ids.narrow(1, 1, 32).reshape({-1}));
        };
        loss_of(t.effective(Binarizer::Xnor, false, false)).backward();
        const at::Tensor weff = t.effective(Binarizer::Xnor, false, false).detach().to(at::kDouble);
        int checked = 0;
        for (int r = 0; r < 172 && checked < 6; r += 29) {
            for (int c = 0; c < 64 && checked < 6; c += 13) {
                if (t.salient[r][c].item<bool>())
                    continue;
                const double h = 1e-3;
                at::Tensor plus = weff.clone(), minus = weff.clone();
                plus[r][c] += h;
                minus[r][c] -= h;
                const double fd = (loss_of(plus.to(at::kFloat)).item<double>() - loss_of(minus.to(at::kFloat)).item<double>()) / (2 * h);
                const double g = t.latent.grad()[r][c].item<double>();
                QVERIFY2(std::abs(fd - g) < 2e-3 + 0.05 * std::abs(g), qPrintable(QString("fd %1 vs %2").arg(fd).arg(g)));
                ++checked;
            }
        }
        QCOMPARE(checked, 6);
    }

    void optimalScaleIsClosedForm()
    {
        PbTrainLinear t = make_train_linear_magnitude("w", at::randn({6, 40}), 0.25, 8);
        const at::Tensor keep = (~t.salient).to(at::kFloat);
        const at::Tensor w = t.latent.detach();
        const auto [alpha, mu] = t.scale_and_mean(Binarizer::Xnor, false);
        const at::Tensor mu_ref = (w * keep).sum(1, true) / keep.sum(1, true);
        QVERIFY(max_abs_diff(mu, mu_ref) < 1e-6);
        QVERIFY(max_abs_diff(alpha, ((w - mu_ref).abs() * keep).sum(1, true) / keep.sum(1, true)) < 1e-6);
        const auto [la, lm] = t.scale_and_mean(Binarizer::Sign, true);
        QCOMPARE(lm.abs().max().item<float>(), 0.0f);
        QVERIFY(std::abs(la[3][0].item<double>() - (w.abs() * keep).sum().item<double>() / keep.sum().item<double>()) < 1e-6);
    }

    void trainingKeepsSalientWeightsAndLearns()
    {
        // Overfit one repeated window: the loss must fall clearly.
        const std::vector<int> one(train_tokens().begin(), train_tokens().begin() + 64);
        QatSettings s = tiny(30);
        const QatResult r = train_qat(stories260k(), one, s, std::nullopt);
        QCOMPARE(r.steps_done, 30);
        QVERIFY2(r.history.back().loss < 0.8 * r.history.front().loss,
                 qPrintable(QString("%1 -> %2").arg(r.history.front().loss).arg(r.history.back().loss)));
        // Salient weights stayed exactly at their initial 8-bit values.
        for (int l = 0; l < 5; ++l) {
            const PbTrainLinear init = make_train_linear_magnitude(linear_name(l, LinearKind::Gate),
                                                                   stories260k().layers[l].weight(LinearKind::Gate), 0.1, 8);
            const QuantizedLinear& q = r.quantized.linears[static_cast<std::size_t>(l * 7 + 4)];
            QCOMPARE(q.name, init.name);
            QVERIFY(at::equal(q.salient, init.salient));
            QVERIFY(at::equal(q.dequantized.masked_select(q.salient), init.frozen.masked_select(init.salient)));
        }
        QVERIFY(r.history.front().tokens_per_second > 0.0);
    }

    void resumeEqualsUninterrupted()
    {
        QTemporaryDir tmp;
        QatSettings s = tiny(6);
        s.kd = 0.3; // distillation too
        const QatResult straight = train_qat(stories260k(), train_tokens(), s, std::nullopt);
        QatSettings first = s;
        first.checkpoint_path = tmp.filePath("run.ckpt").toStdString();
        const QatResult part = train_qat(stories260k(), train_tokens(), first, std::nullopt, {}, {},
                                         [](const QatProgress& p) { return p.step < 3; });
        QVERIFY(part.stopped_early);
        QCOMPARE(part.steps_done, 3);
        const QatResult rest = train_qat(stories260k(), train_tokens(), s, std::nullopt, {}, first.checkpoint_path);
        QCOMPARE(rest.steps_done, 6);
        QCOMPARE(rest.history.front().step, 4);
        for (std::size_t i = 0; i < straight.quantized.linears.size(); ++i)
            QVERIFY2(at::equal(straight.quantized.linears[i].dequantized, rest.quantized.linears[i].dequantized),
                     straight.quantized.linears[i].name.c_str());
        QCOMPARE(rest.history.back().loss, straight.history.back().loss);
        // A checkpoint of other settings is refused.
        QatSettings other = s;
        other.lr = 5e-4;
        try {
            train_qat(stories260k(), train_tokens(), other, std::nullopt, {}, first.checkpoint_path);
            QFAIL("a mismatched resume was accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("other training settings"), e.what());
        }
        QVERIFY_THROWS_EXCEPTION(Error, train_qat(stories260k(), train_tokens(), s, std::nullopt, {},
                                                  tok512_path())); // not a checkpoint
    }

    void exportReloadAndPtqInit()
    {
        // Start from a PB-GPTQ result: mask, salient codes and signs are taken over.
        const QuantizedModel ptq = quantize_model(stories260k(), sample_calibration_windows(train_tokens(), 8, 64, 0), QuantPlan{});
        for (std::size_t i = 0; i < 3; ++i) {
            const PbTrainLinear t = make_train_linear_from(ptq.linears[i]);
            const QuantizedLinear f = t.freeze(Binarizer::Xnor, false);
            QVERIFY(at::equal(f.salient, ptq.linears[i].salient));
            QVERIFY(at::equal(f.codes, ptq.linears[i].codes));
            QVERIFY(at::equal(f.signs.masked_select(~f.salient), ptq.linears[i].signs.masked_select(~f.salient)));
        }
        QatSettings s = tiny(2);
        QatResult r = train_qat(stories260k(), train_tokens(), s, ptq);
        r.quantized.tokenizer_bytes = Tokenizer::from_file(tok512_path()).model_bytes();
        QTemporaryDir tmp;
        const std::string path = tmp.filePath("qat.pbllm.h5").toStdString();
        write_packed_checkpoint(r.quantized, path);
        const PackedCheckpoint back = read_packed_checkpoint(path);
        QVERIFY(QString::fromStdString(back.quantized.training_json).contains("\"init\":\"pb-gptq\""));
        for (std::size_t i = 0; i < r.quantized.linears.size(); ++i)
            QVERIFY(at::equal(back.quantized.linears[i].dequantized, r.quantized.linears[i].dequantized));
        PerplexitySettings ps;
        ps.max_windows = 5;
        const std::vector<int> val = Tokenizer::from_file(tok512_path()).encode(read_text_file(tinystories_val_path()));
        QCOMPARE(evaluate_perplexity(back.quantized.model, val, ps).ppl, evaluate_perplexity(r.quantized.model, val, ps).ppl);
    }

    void rejectsImpossibleSettings()
    {
        QatSettings s = tiny(1);
        s.kd = 1.5;
        QVERIFY_THROWS_EXCEPTION(Error, train_qat(stories260k(), train_tokens(), s, std::nullopt));
        s = tiny(1);
        s.seqlen = 4096;
        QVERIFY_THROWS_EXCEPTION(Error, train_qat(stories260k(), train_tokens(), s, std::nullopt));
        s = tiny(1);
        QVERIFY_THROWS_EXCEPTION(Error, train_qat(stories260k(), {1, 2, 3}, s, std::nullopt));
    }
};

QTEST_GUILESS_MAIN(TestQat)
#include "tst_qat.moc"
