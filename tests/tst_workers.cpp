// The studio's workers: signal sequences (started, progress, result, finished), failure on bad
// input with a readable message, prompt cancellation that leaves the inputs untouched, and the
// preview service's stale-result dropping.
#include "tests/support/test_support.h"
#include "workers/background.h"
#include "workers/jobs.h"
#include "workers/linear_stats_service.h"
#include "workers/preview_service.h"

#include "core/calibration.h"
#include "core/error.h"
#include "core/evaluation.h"
#include "core/model.h"
#include "core/packed_checkpoint.h"
#include "core/ptq.h"
#include "core/synthetic.h"
#include "core/system.h"
#include "core/tokenizer.h"

#include <ATen/ATen.h>
#include <QSignalSpy>
#include <QTemporaryDir>
#include <QtTest>

#include <random>

using namespace pbllm;
using namespace pbllm::test;

class TestWorkers : public QObject {
    Q_OBJECT

    std::shared_ptr<const LoadedModel> model_;

    std::shared_ptr<const LoadedModel> loaded()
    {
        if (!model_) {
            LoadModelJob job;
            QSignalSpy done(&job, &LoadModelJob::loaded);
            job.start(QString::fromStdString(stories260k_path()));
            if (!done.wait(kPatientMs))
                return nullptr;
            model_ = done.first().first().value<std::shared_ptr<const LoadedModel>>();
        }
        return model_;
    }

private Q_SLOTS:
    void loadEmitsStagesThenResult()
    {
        LoadModelJob job;
        QSignalSpy started(&job, &Job::started), progress(&job, &Job::progress), loaded(&job, &LoadModelJob::loaded),
            failed(&job, &Job::failed), finished(&job, &Job::finished);
        QVERIFY(job.start(QString::fromStdString(stories260k_path())));
        QVERIFY(finished.wait(kPatientMs));
        QCOMPARE(started.count(), 1);
        QCOMPARE(failed.count(), 0);
        QCOMPARE(loaded.count(), 1);
        QVERIFY(progress.count() >= 2);
        QCOMPARE(progress.last().at(0).toDouble(), 1.0);
        const auto m = loaded.first().first().value<std::shared_ptr<const LoadedModel>>();
        // stories260K: 5 layers x 7 Linears, dim 64, hidden 172.
        QCOMPARE(m->linears.size(), std::size_t(35));
        QCOMPARE(m->linears[4].name, QString("model.layers.0.mlp.gate_proj"));
        QCOMPARE(m->linears[4].rows, 172);
        std::int64_t total = 0;
        for (const LinearInfo& l : m->linears)
            total += l.weight_count();
        QCOMPARE(m->quantizable_weights, total);
        QVERIFY(!m->mapped); // a llama2.c file is float32 in memory
        QCOMPARE(m->tokenizer->vocab_size(), 512);
    }

    void linearStatsMatchAnIndependentComputation()
    {
        const auto m = loaded();
        QVERIFY(m);
        LinearStatsService stats;
        QSignalSpy progress(&stats, &LinearStatsService::progress);
        stats.reset(m);
        QTRY_VERIFY_WITH_TIMEOUT(stats.complete(), kPatientMs);
        QCOMPARE(progress.last().at(0).toInt(), 35);
        for (int i : {0, 4, 34}) {
            const LinearStats* st = stats.stats(i);
            QVERIFY(st && st->error.isEmpty());
            const at::Tensor w = m->model->layers[static_cast<std::size_t>(m->linears[i].layer)]
                                     .weight(kAllLinearKinds[static_cast<std::size_t>(i) % kLinearKindCount]).to(at::kDouble);
            QVERIFY(std::abs(st->mean - w.mean().item<double>()) < 1e-12);
            QVERIFY(std::abs(st->std - w.std(/*unbiased=*/false).item<double>()) < 1e-12);
            QCOMPARE(st->abs_max, w.abs().max().item<double>());
            QCOMPARE(st->weights.lo, w.min().item<double>());
            QCOMPARE(st->weights.hi, w.max().item<double>());
            double counted = 0; // the histogram counts every weight once
            for (double c : st->weights.counts)
                counted += c;
            QCOMPARE(counted, double(m->linears[i].weight_count()));
            QCOMPARE(st->nonfinite, std::int64_t(0));
        }
    }

    void packedCheckpointOpensRunsFromItsBitsAndEvaluates()
    {
        // A quantized stories260K written as a packed file, then opened as the studio opens it.
        const Tokenizer tok = Tokenizer::from_file(tok512_path());
        QuantizedModel q = quantize_model(stories260k(), {tok.encode("Once upon a time there was a little girl.")}, QuantPlan{});
        q.tokenizer_bytes = tok.model_bytes();
        QTemporaryDir dir;
        const QString path = dir.filePath("q.pbllm.h5");
        write_packed_checkpoint(q, path.toStdString());
        LoadModelJob job;
        QSignalSpy done(&job, &LoadModelJob::loaded), failed(&job, &Job::failed);
        QVERIFY(job.start(path));
        QVERIFY(done.wait(kPatientMs));
        const auto m = done.first().first().value<std::shared_ptr<const LoadedModel>>();
        QVERIFY(m->packed);
        QVERIFY(m->model->has_packed_linears());
        QCOMPARE(m->linears.size(), std::size_t(35));
        QCOMPARE(m->linears[4].rows, 172);
        // The Model page says how it was quantized and what it costs.
        QString quantized, bits;
        for (const auto& [label, value] : m->summary) {
            if (label == "Quantized") quantized = value;
            if (label == "Bits per weight") bits = value;
        }
        const QString achieved = QString::number(100 * q.salient_ratio(), 'f', 2);
        QVERIFY2(quantized == "pb-gptq, 35 Linears, salient " + achieved + "% (asked 10.0%) at 8 bits", qPrintable(quantized));
        QVERIFY2(bits.contains("in the file"), qPrintable(bits));

        // Weight statistics come from the packed layout: the same as the dequantized weights.
        LinearStatsService stats;
        stats.reset(m);
        QTRY_VERIFY_WITH_TIMEOUT(stats.complete(), kPatientMs);
        const LinearStats* st = stats.stats(4);
        QVERIFY(st && st->error.isEmpty());
        QVERIFY(std::abs(st->mean - q.linears[4].dequantized.to(at::kDouble).mean().item<double>()) < 1e-12);

        // It generates and evaluates; the perplexity is the dequantized model's.
        GenerateJob gen;
        QSignalSpy generated(&gen, &GenerateJob::generated);
        SamplerChoice greedy;
        greedy.temperature = 0.0f;
        greedy.max_new_tokens = 20;
        QVERIFY(gen.start(m->model, m->tokenizer, "Once upon a time", greedy));
        QVERIFY(generated.wait(kPatientMs));
        QCOMPARE(generated.first().first().value<GenerationOutcome>().tokens.size(), std::size_t(20));
        EvaluateJob eval;
        QSignalSpy evaluated(&eval, &EvaluateJob::evaluated);
        QVERIFY(eval.start(m->model, m->tokenizer, QString::fromStdString(tinystories_val_path()), 4));
        QVERIFY(evaluated.wait(kPatientMs));
        PerplexitySettings ps;
        ps.max_windows = 4;
        const double dequantized = evaluate_perplexity(q.model, tok.encode(read_text_file(tinystories_val_path())), ps).ppl;
        const double packed = evaluated.first().first().value<EvaluationOutcome>().ppl;
        QVERIFY2(std::abs(packed / dequantized - 1.0) < 1e-5, qPrintable(QString("%1 vs %2").arg(packed).arg(dequantized)));

        // Quantizing it again is refused with the reason.
        QuantizeJob again;
        RunRequest r;
        QVERIFY_THROWS_EXCEPTION(Error, again.start(m, r));
    }

    void linearStatsBackgroundPassStopsButRequestsAreServed()
    {
        const auto m = loaded();
        QVERIFY(m);
        LinearStatsService stats;
        stats.reset(m, /*background=*/false);
        stats.request(20);
        QTRY_VERIFY_WITH_TIMEOUT(stats.stats(20) != nullptr, kPatientMs);
        stats.waitForIdle();
        QTest::qWait(50); // deliveries queued to this thread
        QCOMPARE(stats.computed(), 1);
        QVERIFY(stats.stats(30) == nullptr);
        stats.setBackground(true);
        QTRY_VERIFY_WITH_TIMEOUT(stats.complete(), kPatientMs);
    }

    void bigHuggingFaceModelsOpenMappedWithTheSameStatistics()
    {
        // A small BF16 folder forced to open mapped, against its float32 opening.
        const auto small = loaded();
        QVERIFY(small);
        QTemporaryDir dir;
        SyntheticHfSpec spec;
        spec.config = small->model->config; // tok512's vocabulary
        spec.dtype = at::kBFloat16;
        spec.tokenizer_path = tok512_path();
        const QString folder = dir.filePath("bf16");
        write_synthetic_hf(spec, folder.toStdString());
        std::shared_ptr<const LoadedModel> opened[2];
        for (int mapped = 0; mapped < 2; ++mapped) {
            LoadModelJob job;
            QSignalSpy done(&job, &LoadModelJob::loaded), failed(&job, &Job::failed);
            job.start(folder, QStringLiteral("cpu"), mapped ? StudioStorage::Mapped : StudioStorage::Float32);
            QVERIFY2(done.wait(kPatientMs), failed.isEmpty() ? "" : qPrintable(failed.first().first().toString()));
            opened[mapped] = done.first().first().value<std::shared_ptr<const LoadedModel>>();
            QCOMPARE(opened[mapped]->mapped, mapped == 1);
        }
        QVERIFY(opened[1]->model->layers[0].weight(LinearKind::Q).scalar_type() == at::kBFloat16);
        QVERIFY(opened[0]->model->layers[0].weight(LinearKind::Q).scalar_type() == at::kFloat);
        bool says_mapped = false;
        for (const auto& [label, value] : opened[1]->summary)
            says_mapped |= label == "Stored as" && value.contains("memory-mapped");
        QVERIFY(says_mapped);
        for (int i : {0, 6, 13}) {
            const LinearStats a = compute_linear_stats(*opened[0], i), b = compute_linear_stats(*opened[1], i);
            QCOMPARE(a.mean, b.mean); // BF16 -> float32 is exact, so the figures are identical
            QCOMPARE(a.kurtosis, b.kurtosis);
            QVERIFY(a.weights.counts == b.weights.counts);
        }
        // The automatic choice maps from 1 GiB of float32 weights up.
        QVERIFY(!studio_maps_weights(stories110m_shape(), ModelFormat::HuggingFace, StudioStorage::Auto));
        QVERIFY(studio_maps_weights(tinyllama_1b_shape(), ModelFormat::HuggingFace, StudioStorage::Auto));
        QVERIFY(!studio_maps_weights(tinyllama_1b_shape(), ModelFormat::Llama2cV1, StudioStorage::Auto));
    }

    void backgroundWorkYieldsToInteractiveWork()
    {
        // Each running unit takes one core from interactive work (never below one), and a unit
        // boundary waits until interactive work has been quiet for 300 ms.
        const int all = configured_thread_count();
        QCOMPARE(background::interactive_threads(), all);
        {
            const background::Unit unit;
            QCOMPARE(background::interactive_threads(), std::max(1, all - 1));
            const background::Unit another;
            QCOMPARE(background::interactive_threads(), std::max(1, all - 2));
        }
        QCOMPARE(background::interactive_threads(), all);
        background::interactive_now();
        QElapsedTimer waited;
        waited.start();
        background::yield_to_interactive();
        QVERIFY2(waited.elapsed() >= 250, qPrintable(QString::number(waited.elapsed())));
    }

    void sampledPreviewsEstimateAndTheExactPassMatchesUnsampled()
    {
        const auto m = loaded();
        QVERIFY(m);
        QuantPlan plan;
        plan.config.layer.metric = SaliencyMetric::Magnitude;
        plan.config.layer.salient_ratio = 0.1;
        PreviewService whole, sampled;
        sampled.setSampleBudget(m->quantizable_weights / 4);
        QSignalSpy prepared_whole(&whole, &PreviewService::prepared), prepared_sampled(&sampled, &PreviewService::prepared);
        whole.prepare(m, nullptr, SaliencyMetric::Magnitude);
        sampled.prepare(m, nullptr, SaliencyMetric::Magnitude);
        QVERIFY(prepared_whole.count() == 1 || prepared_whole.wait(kPatientMs));
        QVERIFY(prepared_sampled.count() == 1 || prepared_sampled.wait(kPatientMs));
        QCOMPARE(whole.sampledFraction(), 1.0);
        QVERIFY(std::abs(sampled.sampledFraction() - 0.25) < 1e-9);

        QSignalSpy ready_whole(&whole, &PreviewService::previewReady), ready_sampled(&sampled, &PreviewService::previewReady),
            exact_progress(&sampled, &PreviewService::exactProgress);
        whole.request(plan);
        QVERIFY(ready_whole.wait(kPatientMs));
        const auto reference = ready_whole.first().first().value<PreviewSnapshot>();
        QVERIFY(reference.exact());
        sampled.requestExact(plan);
        QTRY_COMPARE_WITH_TIMEOUT(ready_sampled.count(), 2, kPatientMs);
        const auto estimate = ready_sampled.at(0).first().value<PreviewSnapshot>();
        const auto exact = ready_sampled.at(1).first().value<PreviewSnapshot>();
        QVERIFY(!estimate.exact());
        QVERIFY(exact.exact());
        QCOMPARE(exact_progress.last().at(1).toInt(), 35);
        // The exact pass is the unsampled preview, to the last bit.
        QCOMPARE(exact.estimated_file_bytes, reference.estimated_file_bytes);
        QCOMPARE(exact.headline_bits, reference.headline_bits);
        for (std::size_t i = 0; i < reference.linears.size(); ++i)
            QCOMPARE(exact.linears[i].weight_error, reference.linears[i].weight_error);
        // A quarter of the rows estimates the whole: bits within 0.05, file size within 3%,
        // the mean error within 10%.
        QVERIFY(std::abs(estimate.headline_bits - reference.headline_bits) < 0.05);
        QVERIFY(std::abs(double(estimate.estimated_file_bytes) / double(reference.estimated_file_bytes) - 1.0) < 0.03);
        double e_est = 0, e_ref = 0;
        for (std::size_t i = 0; i < reference.linears.size(); ++i) {
            e_est += estimate.linears[i].weight_error;
            e_ref += reference.linears[i].weight_error;
        }
        QVERIFY2(std::abs(e_est / e_ref - 1.0) < 0.1, qPrintable(QString::number(e_est / e_ref)));

        // A selected Linear's detail: at once from the sample, then from the whole Linear, which
        // is what the unsampled service shows.
        QSignalSpy detail_whole(&whole, &PreviewService::detailReady), detail_sampled(&sampled, &PreviewService::detailReady);
        whole.requestDetail(6, 0.1);
        sampled.requestDetail(6, 0.1);
        QVERIFY(detail_whole.wait(kPatientMs));
        QTRY_COMPARE_WITH_TIMEOUT(detail_sampled.count(), 2, kPatientMs);
        const auto first = detail_sampled.at(0).at(1).value<LinearDetail>();
        const auto second = detail_sampled.at(1).at(1).value<LinearDetail>();
        const auto expected = detail_whole.first().at(1).value<LinearDetail>();
        QVERIFY(first.sampled);
        QVERIFY(!second.sampled && !expected.sampled);
        QCOMPARE(second.achieved_ratio, expected.achieved_ratio);
        QCOMPARE(second.threshold, expected.threshold);
        QVERIFY(second.density == expected.density);
        QVERIFY(second.log10_scores.counts == expected.log10_scores.counts);
    }

    void loadFailureNamesTheFile()
    {
        QTemporaryDir dir;
        const QString bad = dir.filePath("broken.bin");
        write_bytes(bad, std::string(100, '\x07'));
        LoadModelJob job;
        QSignalSpy failed(&job, &Job::failed), loaded(&job, &LoadModelJob::loaded), finished(&job, &Job::finished);
        job.start(bad);
        QVERIFY(finished.wait(kPatientMs));
        QCOMPARE(loaded.count(), 0);
        QCOMPARE(failed.count(), 1);
        QVERIFY2(failed.first().first().toString().contains("broken.bin"), qPrintable(failed.first().first().toString()));
    }

    void calibrationReportsProgressAndHessians()
    {
        const auto m = loaded();
        QVERIFY(m);
        CalibrateJob job;
        QSignalSpy progress(&job, &Job::progress), done(&job, &CalibrateJob::calibrated);
        job.start(m, QString::fromStdString(tinystories_train_path()), 4, 64, 0);
        QVERIFY(done.wait(kPatientMs));
        const auto c = done.first().first().value<std::shared_ptr<const CalibrationResult>>();
        QCOMPARE(c->windows, 4);
        QCOMPARE(c->tokens, std::int64_t(4 * 64));
        QCOMPARE(c->hessian_trace.size(), m->linears.size());
        // tr H of q_proj's input equals that of k_proj and v_proj (same input), and is positive.
        QVERIFY(c->hessian_trace[0] > 0);
        QCOMPARE(c->hessian_trace[0], c->hessian_trace[1]);
        QVERIFY(progress.count() >= 1);
    }

    void cancelStopsPromptlyAndLeavesTheModel()
    {
        const auto m = loaded();
        QVERIFY(m);
        const at::Tensor before = m->model->layers[0].weight(LinearKind::Q).clone();
        QuantizeJob job;
        QSignalSpy cancelled(&job, &Job::cancelled), quantized(&job, &QuantizeJob::quantized),
            finished(&job, &Job::finished), progress(&job, &Job::progress);
        RunRequest r;
        r.plan.config.nsamples = 64;
        r.calibration_text = QString::fromStdString(tinystories_train_path());
        r.eval_text = QString::fromStdString(tinystories_val_path()); // long if it were not cancelled
        // Cancel at the first layer's progress report.
        connect(&job, &Job::progress, &job, [&job](double f, const QString& stage) {
            if (f > 0.05 && stage.startsWith("quantizing"))
                job.cancel();
        });
        job.start(m, r);
        QVERIFY(finished.wait(kPatientMs));
        QCOMPARE(cancelled.count(), 1);
        QCOMPARE(quantized.count(), 0);
        QVERIFY(at::equal(before, m->model->layers[0].weight(LinearKind::Q)));
        // Usable afterwards: the same job object runs to completion.
        QSignalSpy again(&job, &QuantizeJob::quantized);
        r.plan.config.nsamples = 4;
        r.eval_text.clear();
        job.disconnect(&job);
        QVERIFY(job.start(m, r));
        QVERIFY(again.wait(kPatientMs));
        const auto result = again.first().first().value<std::shared_ptr<const RunResult>>();
        QCOMPARE(result->quantized->linears.size(), std::size_t(35));
        QVERIFY(result->bits.measured > 1.0 && result->bits.measured < 4.0);
    }

    void cancelAtARandomPointLeavesTheModel_data()
    {
        QTest::addColumn<QString>("kind");
        QTest::addColumn<int>("seed");
        for (const char* kind : {"calibrate", "pb-gptq", "qat"})
            for (int seed : {1, 2})
                QTest::newRow(qPrintable(QString("%1 #%2").arg(kind).arg(seed))) << QString(kind) << seed;
    }

    void cancelAtARandomPointLeavesTheModel()
    {
        QFETCH(QString, kind);
        QFETCH(int, seed);
        const auto m = loaded();
        QVERIFY(m);
        std::vector<at::Tensor> before;
        for (const NamedTensor& t : m->model->named_tensors())
            before.push_back(t.tensor.clone());
        std::mt19937 rng(static_cast<unsigned>(seed));
        const double cancel_at = std::uniform_real_distribution<double>(0.08, 0.7)(rng);

        CalibrateJob calibrate;
        QuantizeJob quantize;
        Job* job = kind == "calibrate" ? static_cast<Job*>(&calibrate) : static_cast<Job*>(&quantize);
        QSignalSpy cancelled(job, &Job::cancelled), finished(job, &Job::finished), failed(job, &Job::failed);
        QMetaObject::Connection trigger = connect(job, &Job::progress, job, [job, cancel_at](double f, const QString&) {
            if (f >= cancel_at)
                job->cancel();
        });
        RunRequest r;
        r.calibration_text = QString::fromStdString(tinystories_train_path());
        r.plan.config.nsamples = 24;
        r.qat = kind == "qat";
        r.qat_steps = 150;
        if (r.qat)
            r.plan.config.seqlen = 64; // short windows: the test is about cancelling, not training
        if (kind == "calibrate")
            calibrate.start(m, r.calibration_text, 24, 0, 0);
        else
            quantize.start(m, r);
        QVERIFY(finished.wait(kPatientMs));
        QCOMPARE(failed.count(), 0);
        QCOMPARE(cancelled.count(), 1);
        const auto after = m->model->named_tensors();
        for (std::size_t i = 0; i < before.size(); ++i)
            QVERIFY2(at::equal(before[i], after[i].tensor), after[i].name.c_str());
        // Still usable: the same job runs to its result.
        disconnect(trigger);
        QSignalSpy done(job, &Job::finished), errors(job, &Job::failed), stopped(job, &Job::cancelled);
        r.plan.config.nsamples = 2;
        r.qat_steps = 2;
        if (kind == "calibrate")
            calibrate.start(m, r.calibration_text, 2, 32, 0);
        else
            quantize.start(m, r);
        QVERIFY(done.wait(kPatientMs));
        QCOMPARE(errors.count() + stopped.count(), 0);
    }

    void destroyingARunningJobCancelsIt()
    {
        const auto m = loaded();
        QVERIFY(m);
        auto job = std::make_unique<CalibrateJob>();
        job->start(m, QString::fromStdString(tinystories_train_path()), 256, 0, 0);
        QTest::qWait(50);
        QElapsedTimer t;
        t.start();
        job.reset(); // must cancel and join, not crash or run to the end
        QVERIFY2(t.elapsed() < 5000, qPrintable(QString::number(t.elapsed())));
    }

    void previewServiceDeliversOnlyTheNewest()
    {
        const auto m = loaded();
        QVERIFY(m);
        PreviewService service;
        QSignalSpy prepared(&service, &PreviewService::prepared), ready(&service, &PreviewService::previewReady);
        service.prepare(m, nullptr, SaliencyMetric::Magnitude);
        QVERIFY(prepared.wait(kPatientMs));
        QuantPlan plan;
        plan.config.layer.metric = SaliencyMetric::Magnitude;
        std::uint64_t last = 0;
        for (int i = 1; i <= 20; ++i) {
            plan.config.layer.salient_ratio = 0.01 * i;
            last = service.request(plan);
        }
        QVERIFY(ready.wait(kPatientMs));
        QTest::qWait(100);
        const auto snap = ready.last().first().value<PreviewSnapshot>();
        QCOMPARE(snap.id, last);
        for (int i = 0; i < ready.count(); ++i) // stale ones never reach the GUI thread
            QCOMPARE(ready.at(i).first().value<PreviewSnapshot>().id, last);
        QCOMPARE(snap.linears.size(), m->linears.size());
        // At 20% the achieved ratio of every Linear is the requested one (ties aside).
        for (const LinearPreview& p : snap.linears)
            QVERIFY2(std::abs(p.salient_ratio - 0.2) < 0.01, qPrintable(QString::number(p.salient_ratio)));
        // headline bits = 8 r + (1 - r) at r = 0.2.
        QVERIFY(std::abs(snap.headline_bits - (8 * 0.2 + 0.8)) < 0.05);
    }
};

QTEST_GUILESS_MAIN(TestWorkers)
#include "tst_workers.moc"
