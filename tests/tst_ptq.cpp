// Whole-model quantization on the real stories260K: calibration windows and Hessians, the
// calibration file, plan overrides, cancel, and that the input model is never modified.
#include "core/calibration.h"
#include "core/calibration_file.h"
#include "core/error.h"
#include "core/evaluation.h"
#include "core/llama.h"
#include "core/packed_checkpoint.h"
#include "core/ptq.h"
#include "core/streamed_ptq.h"
#include "core/model_io.h"
#include "core/synthetic.h"
#include "core/tokenizer.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <QDir>
#include <QFileInfo>
#include <QTemporaryDir>

#include <cmath>
#include <random>
#include <QtTest>

using namespace pbllm;
using namespace pbllm::test;

namespace {

const std::vector<int>& train_tokens() { return tinystories_train_tokens(); }

std::vector<std::vector<int>> small_windows() { return sample_calibration_windows(train_tokens(), 16, 128, 0); }

/// Packed files carry their creation time; a fixed one makes two writes comparable byte for byte.
struct FixedCreationTime {
    FixedCreationTime() { qputenv("SOURCE_DATE_EPOCH", "1700000000"); }
    ~FixedCreationTime() { qunsetenv("SOURCE_DATE_EPOCH"); }
};

/// A plan that skips one Linear (stored in FP16 under /tensors) and stores another's salient
/// weights in 4 bits, so the file has every kind of part.
QuantPlan mixed_plan()
{
    QuantPlan plan;
    plan.config.layer.salient_ratio = 0.15;
    PlanRule skip("model.layers.1.self_attn.k_proj");
    skip.set("skip", 1);
    PlanRule four("*.mlp.down_proj");
    four.set("salient_bits", 4);
    plan.rules = {skip, four};
    return plan;
}

QuantizeToFileOptions file_options(const QString& out)
{
    QuantizeToFileOptions o;
    o.output = out.toStdString();
    o.model_fingerprint = "test-model";
    return o;
}

} // namespace

class TestPtq : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void jobsTooBigForTheMachineAreRefusedUpFront()
    {
        // Tiny weights but a 262144-wide MLP: one layer's float64 Hessians would need 550 GB.
        ModelConfig c;
        c.dim = 2; c.hidden_dim = 262144; c.n_layers = 1; c.n_heads = 1; c.n_kv_heads = 1; c.vocab_size = 8;
        c.max_seq_len = 16;
        const Model m = make_synthetic_model(c);
        const std::vector<std::vector<int>> windows = {{1, 2, 3, 4}};
        try {
            calibrate(m, windows);
            QFAIL("calibration started");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("calibration of 1 layers") && QString(e.what()).contains("of memory but only"),
                     e.what());
        }
        try {
            quantize_model(m, windows, QuantPlan{});
            QFAIL("quantization started");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("quantizing synthetic") && QString(e.what()).contains("of memory but only"),
                     e.what());
        }
    }

    void calibrationWindowsAreSeededAndInRange()
    {
        const auto a = sample_calibration_windows(train_tokens(), 8, 64, 0);
        const auto b = sample_calibration_windows(train_tokens(), 8, 64, 0);
        const auto c = sample_calibration_windows(train_tokens(), 8, 64, 1);
        QCOMPARE(a, b);
        QVERIFY(a != c);
        for (const auto& w : a) {
            QCOMPARE(w.size(), std::size_t(64));
            // Each window is a contiguous slice of the text.
            const auto it = std::search(train_tokens().begin(), train_tokens().end(), w.begin(), w.end());
            QVERIFY(it != train_tokens().end());
        }
        QVERIFY_THROWS_EXCEPTION(Error, sample_calibration_windows({1, 2, 3}, 1, 64, 0));
    }

    void hessianAccumulatorMatchesDirectProduct_data()
    {
        QTest::addColumn<int>("features");
        QTest::newRow("16") << 16;
        QTest::newRow("2500: three column blocks, two mirrored") << 2500;
    }

    void hessianAccumulatorMatchesDirectProduct()
    {
        QFETCH(int, features);
        const at::Tensor x = at::randn({3, 50, features});
        HessianAccumulator acc(features);
        acc.add(x.narrow(0, 0, 2));
        acc.add(x.narrow(0, 2, 1));
        const at::Tensor flat = x.reshape({-1, features}).to(at::kDouble);
        QCOMPARE(acc.tokens(), std::int64_t(150));
        const at::Tensor direct = at::matmul(flat.t(), flat) * (2.0 / 150);
        // Float32 partial products, float64 accumulation: agreement to float32 precision.
        const double tolerance = 1e-5 * direct.abs().max().item<double>();
        QVERIFY(max_abs_diff(acc.hessian(), direct) < tolerance);
        const at::Tensor taken = acc.take_hessian();
        QVERIFY(max_abs_diff(taken, direct) < tolerance);
        QVERIFY(at::equal(taken, taken.t())); // mirrored exactly, not recomputed
    }

    void calibrationFileRoundTrip()
    {
        CalibrationData data = calibrate(stories260k(), small_windows());
        data.seed = 0;
        data.text_sha256 = "abc";
        QCOMPARE(static_cast<int>(data.hessians.size()), 5);
        QCOMPARE(data.hessians[0][static_cast<int>(LinearInput::MlpHidden)].size(0), std::int64_t(172));
        // Layer 0's attention input is RMSNorm(embedding): check one Hessian independently.
        std::vector<std::int64_t> flat;
        for (const auto& w : data.windows)
            flat.insert(flat.end(), w.begin(), w.end());
        const at::Tensor ids = at::tensor(flat).view({16, 128});
        const at::Tensor h = rms_norm(embed_tokens(stories260k(), ids), stories260k().layers[0].attn_norm, 1e-5f)
                                 .reshape({-1, 64}).to(at::kDouble);
        const at::Tensor direct = at::matmul(h.t(), h) * (2.0 / h.size(0));
        QVERIFY(max_abs_diff(data.hessians[0][0], direct) < 1e-5 * direct.abs().max().item<double>());

        QTemporaryDir tmp;
        const std::string path = tmp.filePath("calib.h5").toStdString();
        write_calibration_file(data, stories260k().config, path);
        const CalibrationData back = read_calibration_file(path, stories260k().config);
        QCOMPARE(back.windows, data.windows);
        QCOMPARE(back.text_sha256, std::string("abc"));
        for (int l = 0; l < 5; ++l)
            for (int i = 0; i < kLinearInputCount; ++i)
                QVERIFY(at::equal(back.hessians[l][i], data.hessians[l][i]));
        ModelConfig other = stories260k().config;
        other.n_layers = 6;
        try {
            read_calibration_file(path, other);
            QFAIL("calibration for another model accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("calibrated for a model with 5 layers"), e.what());
        }
        QVERIFY_THROWS_EXCEPTION(Error, read_calibration_file(stories260k_path(), stories260k().config)); // not HDF5
    }

    void calibrationStreamedToFileReadsBackOnDemand()
    {
        // calibrate_to_file keeps one layer's Hessians at a time and stores them in float32: the
        // in-memory calibration rounded once, read back whole or one at a time.
        CalibrationData reference = calibrate(stories260k(), small_windows());
        CalibrationData meta;
        meta.windows = reference.windows;
        meta.seqlen = reference.seqlen;
        meta.seed = 7;
        meta.text_sha256 = "abc";
        QTemporaryDir tmp;
        const std::string path = tmp.filePath("streamed.calib.h5").toStdString();
        std::vector<double> fractions;
        calibrate_to_file(stories260k(), meta, path, [&](double f, std::string_view) {
            fractions.push_back(f);
            return true;
        });
        QVERIFY(fractions.size() >= 5 && fractions.back() == 1.0);
        const CalibrationData whole = read_calibration_file(path, stories260k().config);
        const CalibrationData lazy = read_calibration_file(path, stories260k().config, HessianLoading::OnDemand);
        QCOMPARE(whole.windows, reference.windows);
        QCOMPARE(lazy.windows, reference.windows);
        QCOMPARE(whole.seed, std::uint64_t(7));
        QVERIFY(lazy.hessians.empty());
        QCOMPARE(lazy.hessian_file, path);
        for (int l = 0; l < 5; ++l)
            for (int i = 0; i < kLinearInputCount; ++i) {
                const at::Tensor rounded = reference.hessians[l][i].to(at::kFloat).to(at::kDouble);
                QVERIFY(at::equal(whole.hessians[l][i], rounded));
                QVERIFY(at::equal(calibration_hessian(lazy, l, static_cast<LinearInput>(i)), rounded));
                QVERIFY(at::equal(calibration_hessian(whole, l, static_cast<LinearInput>(i)), rounded));
            }
        // The traces (the studio's across-layers plot) are stored beside the Hessians: known
        // without reading them, from the float64 sums.
        QCOMPARE(lazy.hessian_traces.size(), std::size_t(5));
        for (int l = 0; l < 5; ++l)
            for (int i = 0; i < kLinearInputCount; ++i) {
                QCOMPARE(lazy.hessian_traces[l][i], reference.hessian_traces[l][i]);
                QCOMPARE(whole.hessian_traces[l][i], reference.hessian_traces[l][i]);
                QCOMPARE(reference.hessian_traces[l][i], reference.hessians[l][i].trace().item<double>());
            }
        // Saving a calibration whose Hessians stayed on disk copies their file.
        const std::string copy = tmp.filePath("copy.calib.h5").toStdString();
        write_calibration_file(lazy, stories260k().config, copy);
        QVERIFY(read_bytes(QString::fromStdString(copy)) == read_bytes(QString::fromStdString(path)));
        const CalibrationData bare = read_calibration_file(path, stories260k().config, HessianLoading::None);
        try {
            calibration_hessian(bare, 0, LinearInput::Mlp);
            QFAIL("Hessians read from a calibration loaded without them");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("without its Hessians"), e.what());
        }
        // A missing folder: refused by name, nothing written.
        const std::string nowhere = tmp.filePath("no/such/folder/c.h5").toStdString();
        try {
            calibrate_to_file(stories260k(), meta, nowhere);
            QFAIL("calibration written into a missing folder");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains(QString::fromStdString(nowhere)), e.what());
        }
        QVERIFY(!QFileInfo::exists(QString::fromStdString(nowhere)));
        // A damaged Hessian (NaN written over one) is named when it is read on demand.
        {
            CalibrationData broken = reference;
            at::Tensor& h = broken.hessians[3][static_cast<int>(LinearInput::MlpHidden)];
            h = h.clone(); // the copy shares the reference's tensors
            h[0][0] = std::nan("");
            write_calibration_file(broken, stories260k().config, path);
        }
        const CalibrationData damaged = read_calibration_file(path, stories260k().config, HessianLoading::OnDemand);
        QVERIFY(at::equal(calibration_hessian(damaged, 2, LinearInput::MlpHidden), reference.hessians[2][3]));
        try {
            calibration_hessian(damaged, 3, LinearInput::MlpHidden);
            QFAIL("a NaN Hessian read");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("layer.3/mlp_hidden contains NaN"), e.what());
        }
    }

    void quantizesWholeModelByPlan()
    {
        const Model& fp = stories260k();
        const at::Tensor before = fp.layers[2].weight(LinearKind::Up).clone();
        QuantPlan plan;
        plan.rules.push_back(PlanRule("model.layers.0.mlp.down_proj").set("salient_ratio", 0.3));
        plan.rules.push_back(PlanRule("model.layers.4.self_attn.*").set("skip", 1));
        const QuantizedModel q = quantize_model(fp, small_windows(), plan);
        QVERIFY(at::equal(fp.layers[2].weight(LinearKind::Up), before)); // input untouched
        QCOMPARE(static_cast<int>(q.linears.size()), 5 * 7 - 4);
        for (const QuantizedLinear& l : q.linears) {
            const double want = l.name == "model.layers.0.mlp.down_proj" ? 0.3 : 0.1;
            QVERIFY2(std::abs(l.salient_ratio - want) < 0.005, l.name.c_str());
            QVERIFY(l.output_error >= 0.0 && l.output_error < 1.0);
            QVERIFY(l.name.find("layers.4.self_attn") == std::string::npos);
        }
        // Layer 0's reported output errors against the product with its Hessian, made here from the
        // exported model's FP16 embedding and norm: attention input for q_proj.
        {
            const LayerwiseQuantizer quantizer(fp, small_windows(), plan);
            const at::Tensor h = rms_norm(quantizer.embed(), round_to_fp16(fp.layers[0].attn_norm), fp.config.norm_eps)
                                     .reshape({-1, fp.config.dim})
                                     .to(at::kDouble);
            const at::Tensor H = at::matmul(h.t(), h) * (2.0 / static_cast<double>(h.size(0)));
            const at::Tensor W = fp.layers[0].weight(LinearKind::Q).to(at::kDouble);
            const at::Tensor dW = W - q.linears[0].dequantized.to(at::kDouble);
            const double want = (at::matmul(dW, H) * dW).sum().item<double>() / (at::matmul(W, H) * W).sum().item<double>();
            QVERIFY2(std::abs(q.linears[0].output_error / want - 1.0) < 1e-4,
                     qPrintable(QString("%1 vs %2").arg(q.linears[0].output_error, 0, 'g', 9).arg(want, 0, 'g', 9)));
        }
        // The model computes with the quantized weights; skipped ones are the FP16 originals.
        QVERIFY(at::equal(q.model.layers[0].weight(LinearKind::Q), q.linears[0].dequantized));
        QVERIFY(at::equal(q.model.layers[4].weight(LinearKind::Q), fp.layers[4].weight(LinearKind::Q).to(at::kHalf).to(at::kFloat)));
        // Quantization costs perplexity, but the model still works.
        PerplexitySettings ps;
        ps.max_windows = 10;
        const std::vector<int> val = Tokenizer::from_file(tok512_path()).encode(read_text_file(tinystories_val_path()));
        const double fp_ppl = evaluate_perplexity(fp, val, ps).ppl, q_ppl = evaluate_perplexity(q.model, val, ps).ppl;
        QVERIFY2(q_ppl > fp_ppl && q_ppl < 40 * fp_ppl, qPrintable(QString("%1 -> %2").arg(fp_ppl).arg(q_ppl)));
    }

    void pbGptqBeatsRtnOnTheRealModel()
    {
        QuantPlan gptq, rtn;
        rtn.config.layer.method = QuantMethod::Rtn;
        const auto windows = small_windows();
        const QuantizedModel a = quantize_model(stories260k(), windows, gptq);
        const QuantizedModel b = quantize_model(stories260k(), windows, rtn);
        PerplexitySettings ps;
        ps.max_windows = 20;
        const std::vector<int> val = Tokenizer::from_file(tok512_path()).encode(read_text_file(tinystories_val_path()));
        const double pa = evaluate_perplexity(a.model, val, ps).ppl, pbb = evaluate_perplexity(b.model, val, ps).ppl;
        QVERIFY2(pa < pbb, qPrintable(QString("PB-GPTQ %1 vs RTN %2").arg(pa).arg(pbb)));
    }

    void streamedQuantizationWritesTheSameFileAsTheInMemoryOne()
    {
        const FixedCreationTime fixed;
        QTemporaryDir tmp;
        const QuantPlan plan = mixed_plan();
        const QString a = tmp.filePath("memory.pbllm.h5"), b = tmp.filePath("streamed.pbllm.h5");
        write_packed_checkpoint(quantize_model(stories260k(), small_windows(), plan), a.toStdString());
        std::vector<int> layers_seen;
        QuantizeToFileOptions o = file_options(b);
        o.layer_done = [&](const LayerReport& r) { layers_seen.push_back(r.layer); };
        const QuantizeToFileResult r = quantize_to_file(stories260k(), small_windows(), plan, o);
        QVERIFY(read_bytes(a) == read_bytes(b));
        QCOMPARE(layers_seen, (std::vector<int>{0, 1, 2, 3, 4}));
        QCOMPARE(static_cast<int>(r.linears.size()), 5 * 7 - 1);
        QCOMPARE(r.file_bytes, QFileInfo(b).size());
        QVERIFY(!QFileInfo::exists(QString::fromStdString(partial_folder(b.toStdString())))); // cleaned up
        // The report agrees with what the file holds.
        const PackedCheckpoint back = read_packed_checkpoint(b.toStdString());
        QCOMPARE(r.bits.measured, bits_per_weight(back.packed).measured);
        QCOMPARE(r.salient_ratio, back.quantized.salient_ratio());
    }

    void mappedBf16ModelQuantizesExactlyLikeItsFloat32Load()
    {
        const FixedCreationTime fixed;
        QTemporaryDir tmp;
        SyntheticHfSpec spec;
        spec.config = stories260k().config;
        spec.config.n_layers = 2;
        spec.config.tied_embeddings = false;
        spec.dtype = at::kBFloat16;
        spec.seed = 3;
        const std::string folder = tmp.filePath("bf16").toStdString();
        write_synthetic_hf(spec, folder);
        LoadOptions mapped;
        mapped.storage = WeightStorage::Mapped;
        const Model m = load_model(folder, mapped);
        QVERIFY(m.layers[0].weight(LinearKind::Up).scalar_type() == at::kBFloat16); // really mapped
        QuantPlan plan;
        plan.config.quantize_head = true;
        const QString a = tmp.filePath("float32.pbllm.h5"), b = tmp.filePath("mapped.pbllm.h5");
        write_packed_checkpoint(quantize_model(load_model(folder), small_windows(), plan), a.toStdString());
        const QuantizeToFileResult r = quantize_to_file(m, small_windows(), plan, file_options(b));
        QVERIFY(read_bytes(a) == read_bytes(b));
        QCOMPARE(static_cast<int>(r.linears.size()), 2 * 7 + 1);
        QCOMPARE(r.linears.back().name, std::string("lm_head"));
    }

    void anInterruptedRunResumesToTheSameBytes()
    {
        const FixedCreationTime fixed;
        QTemporaryDir tmp;
        const QuantPlan plan = mixed_plan();
        const QString whole = tmp.filePath("whole.pbllm.h5");
        quantize_to_file(stories260k(), small_windows(), plan, file_options(whole));
        // 5 layers x 9 stages, then the final write: stop at random points, each after another.
        std::random_device device;
        const unsigned seed = device();
        std::mt19937 rng(seed);
        for (int attempt = 0; attempt < 3; ++attempt) {
            const int stop_at = std::uniform_int_distribution<int>(1, 46)(rng);
            const QString out = tmp.filePath(QString("cut%1.pbllm.h5").arg(attempt));
            int calls = 0;
            const std::string where = "seed " + std::to_string(seed) + ", stop at call " + std::to_string(stop_at);
            try {
                quantize_to_file(stories260k(), small_windows(), plan, file_options(out),
                                 [&](double, std::string_view) { return ++calls < stop_at; });
                QFAIL(("not interrupted: " + where).c_str());
            } catch (const Cancelled&) {
            }
            QVERIFY2(!QFileInfo::exists(out), where.c_str()); // no partial output
            QVERIFY2(QFileInfo(QString::fromStdString(partial_folder(out.toStdString()))).isDir(), where.c_str());
            QuantizeToFileOptions o = file_options(out);
            o.resume = true;
            const QuantizeToFileResult r = quantize_to_file(stories260k(), small_windows(), plan, o);
            QVERIFY2(read_bytes(out) == read_bytes(whole), where.c_str());
            QVERIFY2(r.resumed_layers == std::min(5, (stop_at - 1) / 9), where.c_str());
            QCOMPARE(static_cast<int>(r.linears.size()), 5 * 7 - 1); // reports of resumed layers included
        }
    }

    void resumeRefusesAnotherRun()
    {
        QTemporaryDir tmp;
        const QString out = tmp.filePath("q.pbllm.h5");
        const QuantPlan plan = mixed_plan();
        int calls = 0;
        QVERIFY_THROWS_EXCEPTION(Cancelled, quantize_to_file(stories260k(), small_windows(), plan, file_options(out),
                                                             [&](double, std::string_view) { return ++calls < 20; }));
        auto refusal = [&](const QuantPlan& p, const std::vector<std::vector<int>>& windows, const std::string& fingerprint,
                           bool resume) {
            QuantizeToFileOptions o = file_options(out);
            o.resume = resume;
            o.model_fingerprint = fingerprint;
            try {
                quantize_to_file(stories260k(), windows, p, o);
            } catch (const Error& e) {
                return QString(e.what());
            }
            return QString("accepted");
        };
        QuantPlan other = plan;
        other.config.layer.salient_ratio = 0.2;
        const QString plan_refusal = refusal(other, small_windows(), "test-model", true);
        QVERIFY2(plan_refusal.contains("different plan") && plan_refusal.contains("salient_ratio: 0.15 then, 0.2 now"),
                 qPrintable(plan_refusal));
        const QString windows_refusal = refusal(plan, sample_calibration_windows(train_tokens(), 16, 128, 1), "test-model", true);
        QVERIFY2(windows_refusal.contains("different calibration"), qPrintable(windows_refusal));
        const QString model_refusal = refusal(plan, small_windows(), "another-model", true);
        QVERIFY2(model_refusal.contains("different model"), qPrintable(model_refusal));
        const QString fresh = refusal(plan, small_windows(), "test-model", false);
        QVERIFY2(fresh.contains(".partial") && fresh.contains("--resume"), qPrintable(fresh));
        const int threads = at::get_num_threads();
        at::set_num_threads(threads + 1);
        const QString thread_refusal = refusal(plan, small_windows(), "test-model", true);
        at::set_num_threads(threads);
        QVERIFY2(thread_refusal.contains("different thread count") && thread_refusal.contains("--threads"),
                 qPrintable(thread_refusal));
        // A damaged layer file is named before the run goes on.
        const QString layer0 = QString::fromStdString(partial_folder(out.toStdString()) + "/layer-0000.h5");
        const std::string intact = read_bytes(layer0);
        write_bytes(layer0, intact + "x");
        const QString damaged = refusal(plan, small_windows(), "test-model", true);
        QVERIFY2(damaged.contains("layer-0000.h5") && damaged.contains("checksum"), qPrintable(damaged));
        write_bytes(layer0, intact);
        // A damaged state is named, not trusted.
        write_bytes(QString::fromStdString(partial_folder(out.toStdString()) + "/state.json"), "{");
        const QString corrupt = refusal(plan, small_windows(), "test-model", true);
        QVERIFY2(corrupt.contains("state.json") && corrupt.contains("corrupt"), qPrintable(corrupt));
        QVERIFY(!QFileInfo::exists(out));
    }

    void cancelLeavesModelUnchanged()
    {
        const at::Tensor before = stories260k().layers[0].weight(LinearKind::Q).clone();
        int calls = 0;
        QVERIFY_THROWS_EXCEPTION(Cancelled, quantize_model(stories260k(), small_windows(), QuantPlan{},
                                                           [&](double, std::string_view) { return ++calls < 10; }));
        QCOMPARE(calls, 10);
        QVERIFY(at::equal(stories260k().layers[0].weight(LinearKind::Q), before));
    }
};

QTEST_GUILESS_MAIN(TestPtq)
#include "tst_ptq.moc"
