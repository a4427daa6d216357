// The studio's widgets on the offscreen platform: item models under QAbstractItemModelTester,
// the tuning slider driving the preview chart and bits label, per-Linear overrides editing the
// plan, and an end-to-end run: load stories260K, calibrate, quantize, export, compare.
#include "tests/support/test_support.h"
#include "widgets/layer_tree_model.h"
#include "widgets/main_window.h"
#include "widgets/pages.h"
#include "widgets/plan_table_model.h"
#include "widgets/studio_context.h"

#include "core/hf_model.h"
#include "core/model_io.h"
#include "core/packed_checkpoint.h"
#include "core/synthetic.h"

#include <QAbstractItemModelTester>
#include <QComboBox>
#include <QLabel>
#include <QRegularExpression>
#include <QSettings>
#include <QSignalSpy>
#include <QSlider>
#include <QSpinBox>
#include <QStandardPaths>
#include <QTemporaryDir>
#include <QtTest>

using namespace pbllm;
using namespace pbllm::test;

class TestStudio : public QObject {
    Q_OBJECT

    std::unique_ptr<MainWindow> window_;

private Q_SLOTS:
    void initTestCase()
    {
        QStandardPaths::setTestModeEnabled(true); // QSettings of the test, not the user's
        QCoreApplication::setOrganizationName("pbllm-tests");
        QSettings s;
        s.clear();
        s.setValue("nsamples", 8);
        s.setValue("calibration_text", QString::fromStdString(tinystories_train_path()));
        s.setValue("eval_text", QString::fromStdString(tinystories_val_path()));
        window_ = std::make_unique<MainWindow>();
        QSignalSpy loaded(&window_->loadJob(), &LoadModelJob::loaded);
        QSignalSpy prepared(&window_->context().previews(), &PreviewService::prepared);
        window_->openModel(QString::fromStdString(stories260k_path()));
        QVERIFY(loaded.wait(kPatientMs));
        QVERIFY(prepared.count() > 0 || prepared.wait(kPatientMs));
    }

    void cleanupTestCase() { window_.reset(); }

    void itemModelsPassTheTester()
    {
        LayerTreeModel* tree = window_->modelPage()->treeModel();
        QAbstractItemModelTester tree_tester(tree, QAbstractItemModelTester::FailureReportingMode::QtTest);
        QCOMPARE(tree->rowCount(), 5);
        QCOMPARE(tree->rowCount(tree->index(0, 0)), 7);
        const QModelIndex down = tree->index(6, LayerTreeModel::Shape, tree->index(0, 0));
        QCOMPARE(down.data().toString(), QString("64 x 172"));
        PlanTableModel* plan = window_->tuningPage()->tableModel();
        QAbstractItemModelTester plan_tester(plan, QAbstractItemModelTester::FailureReportingMode::QtTest);
        QCOMPARE(plan->rowCount(), 35);
        // Statistics fill in from the background pass, each row as it arrives.
        LinearStatsService& stats = window_->context().stats();
        QTRY_VERIFY_WITH_TIMEOUT(stats.complete(), kPatientMs);
        const QModelIndex kurtosis = tree->index(6, LayerTreeModel::Kurtosis, tree->index(0, 0));
        QCOMPARE(kurtosis.data(Qt::EditRole).toDouble(), stats.stats(6)->kurtosis);
        tree->setModel(window_->context().model(), &stats); // a reset under the tester
        plan->refresh();
    }

    void sliderUpdatesChartAndBits()
    {
        TuningPage* page = window_->tuningPage();
        QSignalSpy updated(page, &TuningPage::chartUpdated);
        page->ratioSlider()->setValue(page->ratioSlider()->maximum() * 3 / 10); // 15%
        QVERIFY(updated.wait(kPatientMs));
        // headline = 8 r + (1 - r): 2.05 at 15%, 1.70 at 10% (achieved ratios are floor(r n) / n).
        auto headline = [page] {
            const QRegularExpressionMatch m = QRegularExpression("headline ([0-9.]+)").match(page->bitsLabel()->text());
            return m.hasMatch() ? m.captured(1).toDouble() : -1.0;
        };
        QTRY_VERIFY_WITH_TIMEOUT(std::abs(headline() - 2.05) < 0.005, kPatientMs);
        const int before = page->replots();
        page->ratioSlider()->setValue(page->ratioSlider()->maximum() / 5); // 10%
        QTRY_VERIFY_WITH_TIMEOUT(std::abs(headline() - 1.70) < 0.005, kPatientMs);
        QVERIFY(page->replots() > before);
        QCOMPARE(window_->context().plan().config.layer.salient_ratio, 0.1);
    }

    void overridingALayerChangesThePlan()
    {
        PlanTableModel* table = window_->tuningPage()->tableModel();
        const std::string down0 = "model.layers.0.mlp.down_proj";
        QVERIFY(table->setData(table->index(6, PlanTableModel::Ratio), "30%"));
        QCOMPARE(window_->context().plan().settings_for(down0).salient_ratio, 0.3);
        QCOMPARE(window_->context().plan().settings_for("model.layers.1.mlp.down_proj").salient_ratio, 0.1);
        QCOMPARE(table->index(6, PlanTableModel::Overridden).data(Qt::EditRole).toBool(), true);
        QVERIFY(!table->setData(table->index(6, PlanTableModel::Bits), 9)); // impossible bit-width refused
        QVERIFY(table->setData(table->index(6, PlanTableModel::Bits), 4));
        QCOMPARE(window_->context().plan().settings_for(down0).salient_bits, 4);
        table->resetOverrides({6});
        QCOMPARE(window_->context().plan().settings_for(down0).salient_ratio, 0.1);
        QVERIFY(window_->context().plan().rules.empty());
    }

    /// The block binarizers preview on the Tuning page: choosing arb-rc there sets the plan (and
    /// the Run page's method), every Linear shows its error and 2-bit salient columns, the
    /// bits come from its packed codes, and 8-bit scales lower the estimated stored bits.
    void blockBinaryMethodPreviews()
    {
        TuningPage* page = window_->tuningPage();
        QSignalSpy updated(page, &TuningPage::chartUpdated);
        auto stored = [page] {
            const QRegularExpressionMatch m = QRegularExpression("estimated stored ([0-9.]+)").match(page->bitsLabel()->text());
            return m.hasMatch() ? m.captured(1).toDouble() : -1.0;
        };
        const double pb = stored();
        page->methodCombo()->setCurrentIndex(page->methodCombo()->findData("arb-rc"));
        QCOMPARE(static_cast<int>(window_->context().plan().config.layer.method), static_cast<int>(QuantMethod::ArbRc));
        QTRY_COMPARE(window_->runPage()->findChild<QComboBox*>("method")->currentData().toString(), QString("arb-rc"));
        QVERIFY(!page->ratioSlider()->isEnabled()); // arb-rc searches its salient columns
        // The setting combos come from the settings' table, enabled as the method reads them.
        QCOMPARE(static_cast<int>(page->settingCombos().size()), 6);
        QVERIFY(page->findChild<QComboBox*>("metric")->isEnabled());
        QVERIFY(!page->findChild<QComboBox*>("binarizer")->isEnabled());
        PlanTableModel* table = page->tableModel();
        QCOMPARE(table->index(0, PlanTableModel::Bits).data(Qt::EditRole).toInt(), 2);
        QVERIFY(!(table->flags(table->index(0, PlanTableModel::Ratio)) & Qt::ItemIsEditable));
        QTRY_VERIFY_WITH_TIMEOUT(table->index(0, PlanTableModel::Ratio).data(Qt::DisplayRole).toString().endsWith("searched") &&
                                     table->index(0, PlanTableModel::Ratio).data(Qt::EditRole).toDouble() > 0.0,
                                 kPatientMs);
        QTRY_VERIFY_WITH_TIMEOUT(stored() > 3.0 && stored() != pb, kPatientMs); // FP16 scales over 64-wide rows
        const double fp16 = stored();
        const double error = table->index(0, PlanTableModel::WeightError).data(Qt::EditRole).toDouble();
        QVERIFY2(error > 0.0 && error < 1.0, qPrintable(QString::number(error)));
        QComboBox* format = page->findChild<QComboBox*>("scale-format");
        QVERIFY(format && format->isEnabled());
        format->setCurrentIndex(format->findData("log8"));
        QCOMPARE(static_cast<int>(window_->context().plan().config.layer.block_binary.scale_format), static_cast<int>(ScaleFormat::Log8));
        QTRY_VERIFY_WITH_TIMEOUT(stored() > 0.0 && stored() < fp16 - 0.3, kPatientMs);
        // Switching to arb on the Run page drops arb-rc's 8-bit scales: the plan stays runnable.
        QComboBox* run_method = window_->runPage()->findChild<QComboBox*>("method");
        run_method->setCurrentIndex(run_method->findData("arb"));
        QCOMPARE(static_cast<int>(window_->context().plan().config.layer.method), static_cast<int>(QuantMethod::Arb));
        QCOMPARE(static_cast<int>(window_->context().plan().config.layer.block_binary.scale_format), static_cast<int>(ScaleFormat::Fp16));
        window_->context().plan().validate();
        QCOMPARE(page->methodCombo()->currentData().toString(), QString("arb"));
        QVERIFY(!format->isEnabled());
        QSpinBox* blocksize = window_->runPage()->findChild<QSpinBox*>("blocksize");
        blocksize->setValue(64);
        QCOMPARE(window_->context().plan().config.blocksize, 64);
        blocksize->setValue(128);
        // Back to PB-LLM: arb-rc's own option returns to its default, the slider comes back.
        page->methodCombo()->setCurrentIndex(page->methodCombo()->findData("pb-gptq"));
        QCOMPARE(static_cast<int>(window_->context().plan().config.layer.block_binary.scale_format), static_cast<int>(ScaleFormat::Fp16));
        QVERIFY(page->ratioSlider()->isEnabled() && !format->isEnabled());
        QTRY_VERIFY_WITH_TIMEOUT(std::abs(stored() - pb) < 1e-9, kPatientMs);
    }

    void endToEnd()
    {
        StudioContext& ctx = window_->context();
        QSignalSpy calibrated(&ctx, &StudioContext::calibrationChanged);
        window_->distributionsPage()->calibrate();
        QTRY_VERIFY_WITH_TIMEOUT(ctx.calibration() != nullptr, kPatientMs);
        QCOMPARE(ctx.calibration()->windows, 8);

        QSignalSpy ran(&window_->runPage()->job(), &QuantizeJob::quantized);
        window_->runPage()->start();
        QVERIFY(ran.wait(kPatientMs));
        const auto run = ctx.run();
        QVERIFY(run);
        QVERIFY(run->ppl_after > run->ppl_before); // binarization costs perplexity
        QVERIFY(run->ppl_before > 4.0 && run->ppl_before < 7.0);

        QTemporaryDir dir;
        const QString path = dir.filePath("studio.pbllm.h5");
        QSignalSpy exported(&window_->exportPage()->job(), &ExportJob::exported);
        window_->exportPage()->exportTo(path, true);
        QVERIFY(exported.wait(kPatientMs));
        const auto result = exported.first().first().value<ExportResult>();
        QCOMPARE(result.file_bytes, QFileInfo(path).size());
        QVERIFY(result.compression_vs_fp16 > 1.5);
        const PackedCheckpoint back = read_packed_checkpoint(path.toStdString());
        QCOMPARE(back.packed.size(), std::size_t(35));

        QSignalSpy compared(window_->comparePage(), &ComparePage::comparisonDone);
        window_->comparePage()->start();
        QVERIFY(compared.wait(kPatientMs));
        QVERIFY2(window_->comparePage()->statsText().contains("tok/s"), qPrintable(window_->comparePage()->statsText()));
        // The run's result runs from its bits, as the exported file will.
        QVERIFY(run->model->has_packed_linears());
        QSignalSpy full_eval(&window_->comparePage()->evaluateJob(false), &EvaluateJob::evaluated);
        QSignalSpy packed_eval(&window_->comparePage()->evaluateJob(true), &EvaluateJob::evaluated);
        window_->comparePage()->evaluate();
        QVERIFY(full_eval.count() > 0 || full_eval.wait(kPatientMs));
        QVERIFY(packed_eval.count() > 0 || packed_eval.wait(kPatientMs));
        QVERIFY2(window_->comparePage()->evaluationText().contains("Compressed (from its bits): perplexity"),
                 qPrintable(window_->comparePage()->evaluationText()));

        // The exported file, reopened: its Model page says how it was quantized, and it generates
        // and evaluates from its bits.
        MainWindow reopened;
        QSignalSpy loaded(&reopened.loadJob(), &LoadModelJob::loaded);
        reopened.openModel(path);
        QVERIFY(loaded.wait(kPatientMs));
        const auto m = reopened.context().model();
        QVERIFY(m->packed);
        bool described = false;
        for (const auto& line : m->summary)
            described = described || (line.first == "Quantized" && line.second.startsWith("pb-gptq"));
        QVERIFY(described);
        QSignalSpy generated(reopened.comparePage(), &ComparePage::comparisonDone);
        reopened.comparePage()->start();
        QVERIFY(generated.wait(kPatientMs));
        QVERIFY2(reopened.comparePage()->statsText().contains("tok/s"), qPrintable(reopened.comparePage()->statsText()));
        QSignalSpy reopened_eval(&reopened.comparePage()->evaluateJob(true), &EvaluateJob::evaluated);
        reopened.comparePage()->evaluate();
        QVERIFY(reopened_eval.wait(kPatientMs));
        QVERIFY(reopened_eval.first().first().value<EvaluationOutcome>().ppl > 1.0);
    }

    void opensEachFamily_data()
    {
        QTest::addColumn<QString>("family");
        QTest::addColumn<QString>("expected");
        QTest::newRow("llama 3.1") << "llama-3.1" << "llama, rope_theta 500000, llama3 RoPE scaling x8 from 16 positions";
        QTest::newRow("mistral") << "mistral" << "mistral, sliding window 32";
        QTest::newRow("qwen2.5") << "qwen2.5" << "qwen2, rope_theta 1000000, q/k/v biases";
        QTest::newRow("qwen3") << "qwen3" << "qwen3, rope_theta 1000000, head_dim 16, per-head q/k norms";
    }
    // A Hugging Face folder of each family (GPT-2's tokenizer.json beside it) opens, and the Model
    // page names the family and what sets it apart.
    void opensEachFamily()
    {
        QFETCH(QString, family);
        QFETCH(QString, expected);
        const ModelConfig c = small_family_config(family.toStdString());
        QTemporaryDir tmp;
        HfExportOptions options;
        options.tokenizer_path = shared_dir() + "/models/tokenizers-bpe/gpt2/tokenizer.json";
        save_hf(make_synthetic_model(c, 5), tmp.filePath("model").toStdString(), options);
        MainWindow window;
        QSignalSpy loaded(&window.loadJob(), &LoadModelJob::loaded);
        window.openModel(tmp.filePath("model"));
        QVERIFY(loaded.wait(kPatientMs));
        const QString summary = window.modelPage()->summaryText();
        QVERIFY2(summary.contains(expected + ": 2 layers, dim 32, hidden 64, 4 heads (2 KV), vocab 50257"), qPrintable(summary));
        QVERIFY2(summary.contains("tokenizer.json (50257 pieces)"), qPrintable(summary));
        QCOMPARE(window.modelPage()->treeModel()->rowCount(), 2);
    }

    void screenshotOfAPage()
    {
        QVERIFY(window_->showPage("tuning"));
        QVERIFY(!window_->showPage("nonsense"));
        const QImage shot = window_->grab().toImage();
        QVERIFY(shot.width() > 600 && shot.height() > 400);
    }

    void sampledPreviewsSaySoUntilTheSliderIsReleased()
    {
        // A preview budget of a quarter of the weights stands in for a 7B model's 0.5%.
        StudioContext& ctx = window_->context();
        TuningPage* page = window_->tuningPage();
        QSignalSpy prepared(&ctx.previews(), &PreviewService::prepared);
        ctx.previews().setSampleBudget(ctx.model()->quantizable_weights / 4);
        ctx.setModel(ctx.model());
        QVERIFY(prepared.wait(kPatientMs));
        QSlider* slider = page->ratioSlider();
        slider->setSliderDown(true);
        slider->setValue(slider->maximum() * 3 / 10); // 15%
        QTRY_VERIFY_WITH_TIMEOUT(page->bitsLabel()->text().contains("estimated from 25% of each Linear's rows"), kPatientMs);
        slider->setSliderDown(false); // the release asks for the exact figures
        QTRY_VERIFY_WITH_TIMEOUT(page->bitsLabel()->text().contains(", exact)"), kPatientMs);
        // The exact figures are the unsampled ones: headline 2.05 at 15% (as sliderUpdatesChartAndBits).
        QVERIFY2(page->bitsLabel()->text().contains("headline 2.05"), qPrintable(page->bitsLabel()->text()));
        ctx.previews().setSampleBudget(PreviewService::kDefaultSampleBudget);
    }
};

QTEST_MAIN(TestStudio)
#include "tst_studio.moc"
