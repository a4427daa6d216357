#include "widgets/pages.h"
#include "core/quant/registry.h"
#include "core/quant/settings.h"
#include "widgets/qcustomplot_include.h"
#include "widgets/studio_context.h"

#include <QComboBox>

#include <algorithm>
#include <QDateTime>
#include <QDoubleSpinBox>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QLabel>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QSignalBlocker>
#include <QSpinBox>
#include <QVBoxLayout>

namespace pbllm {

RunPage::RunPage(StudioContext& context, QWidget* parent) : QWidget(parent), context_(context)
{
    auto* layout = new QHBoxLayout(this);
    auto* left = new QFormLayout;
    method_ = new QComboBox;
    method_->setObjectName("method");
    for (const MethodInfo& m : methods()) { // the registry's rows, in its order
        method_->addItem(QString("%1: %2").arg(m.name, m.summary), m.name);
        method_->setItemData(method_->count() - 1, QString(m.summary), Qt::ToolTipRole);
    }
    nsamples_ = new QSpinBox;
    nsamples_->setRange(1, 4096);
    nsamples_->setValue(context_.settings().nsamples);
    blocksize_ = new QSpinBox;
    blocksize_->setObjectName("blocksize");
    blocksize_->setRange(1, 4096);
    blocksize_->setValue(128);
    percdamp_ = new QDoubleSpinBox;
    percdamp_->setDecimals(3);
    percdamp_->setRange(0.0, 1.0);
    percdamp_->setSingleStep(0.005);
    percdamp_->setValue(0.01);
    gptq_bits_ = new QSpinBox;
    gptq_bits_->setRange(2, 8);
    gptq_bits_->setValue(4);
    seed_ = new QSpinBox;
    seed_->setRange(0, 1 << 30);
    qat_steps_ = new QSpinBox;
    qat_steps_->setRange(1, 100000);
    qat_steps_->setValue(100);
    qat_lr_ = new QDoubleSpinBox;
    qat_lr_->setDecimals(6);
    qat_lr_->setRange(1e-6, 1.0);
    qat_lr_->setSingleStep(1e-4);
    qat_lr_->setValue(1e-3);
    qat_kd_ = new QDoubleSpinBox;
    qat_kd_->setRange(0.0, 1.0);
    qat_kd_->setSingleStep(0.1);
    eval_ = new QComboBox;
    eval_->addItem(tr("quick (first 32 windows)"), 32);
    eval_->addItem(tr("full"), 0);
    eval_->addItem(tr("none"), -1);
    run_ = new QPushButton(tr("Run"));
    left->addRow(tr("Method"), method_);

    left->addRow(tr("Calibration windows"), nsamples_);
    left->addRow(tr("GPTQ block size"), blocksize_);
    left->addRow(tr("Damping (of mean diag H)"), percdamp_);
    left->addRow(tr("GPTQ bits"), gptq_bits_);
    left->addRow(tr("Seed"), seed_);
    left->addRow(tr("QAT steps"), qat_steps_);
    left->addRow(tr("QAT learning rate"), qat_lr_);
    left->addRow(tr("QAT distillation weight"), qat_kd_);
    left->addRow(tr("Perplexity"), eval_);
    left->addRow(run_);
    layout->addLayout(left);

    auto* right = new QVBoxLayout;
    progress_ = new JobProgress;
    progress_->attach(&job_);
    result_ = new QLabel(tr("Salient ratio, bits and metric come from the Tuning page."));
    result_->setTextInteractionFlags(Qt::TextSelectableByMouse);
    result_->setWordWrap(true);
    loss_plot_ = new QCustomPlot;
    loss_plot_->setMinimumHeight(200);
    loss_plot_->addGraph();
    loss_plot_->graph(0)->setPen(QPen(QColor(31, 119, 180), 2));
    loss_plot_->xAxis->setLabel(tr("QAT step"));
    loss_plot_->yAxis->setLabel(tr("loss"));
    log_ = new QPlainTextEdit;
    log_->setReadOnly(true);
    log_->setMaximumBlockCount(5000);
    right->addWidget(progress_);
    right->addWidget(result_);
    right->addWidget(loss_plot_, 1);
    right->addWidget(log_, 1);
    layout->addLayout(right, 1);

    auto sync_enabled = [this] {
        const MethodInfo* m = find_method(method_->currentData().toString().toStdString());
        const bool training = m && !m->quantize;
        gptq_bits_->setEnabled(m && m->reads("bits"));
        blocksize_->setEnabled(m && m->quantize && m->needs_hessian); // the block of the solver or of BiLLM
        for (QWidget* w : {static_cast<QWidget*>(qat_steps_), static_cast<QWidget*>(qat_lr_), static_cast<QWidget*>(qat_kd_)})
            w->setEnabled(training);
        loss_plot_->setVisible(training);
    };
    connect(method_, qOverload<int>(&QComboBox::currentIndexChanged), this, sync_enabled);
    // The method is a plan setting (the Tuning page previews it): one value, shown on both pages.
    connect(method_, qOverload<int>(&QComboBox::currentIndexChanged), this, [this] {
        const MethodInfo* m = find_method(method_->currentData().toString().toStdString());
        if (!m || !m->quantize || context_.plan().config.layer.method == m->id)
            return;
        QuantPlan plan = context_.plan();
        set_default_method(plan, m->id);
        context_.setPlan(plan);
    });
    // Block size and damping too: the Tuning page previews with what a run will use.
    auto write_solver_settings = [this] {
        QuantPlan plan = context_.plan();
        if (plan.config.blocksize == blocksize_->value() && plan.config.percdamp == percdamp_->value())
            return;
        plan.config.blocksize = blocksize_->value();
        plan.config.percdamp = percdamp_->value();
        context_.setPlan(plan);
    };
    connect(blocksize_, qOverload<int>(&QSpinBox::valueChanged), this, write_solver_settings);
    connect(percdamp_, qOverload<double>(&QDoubleSpinBox::valueChanged), this, write_solver_settings);
    connect(&context_, &StudioContext::planChanged, this, [this] {
        const QuantConfig& c = context_.plan().config;
        if (method_->currentData().toString() != "qat")
            setMethod(QString::fromStdString(to_string(c.layer.method)));
        const QSignalBlocker a(blocksize_), b(percdamp_);
        blocksize_->setValue(c.blocksize);
        percdamp_->setValue(c.percdamp);
    });
    sync_enabled();
    connect(run_, &QPushButton::clicked, this, &RunPage::start);
    connect(&job_, &Job::started, this, [this] {
        run_->setEnabled(false);
        loss_plot_->graph(0)->data()->clear();
        log(tr("started %1").arg(method_->currentData().toString()));
    });
    connect(&job_, &Job::progress, this, [this](double, const QString& stage) {
        if (!log_->document()->lastBlock().text().endsWith(stage))
            log(stage);
    });
    connect(&job_, &QuantizeJob::trainingStep, this, [this](const TrainingStep& s) {
        loss_plot_->graph(0)->addData(s.step, s.loss);
        loss_plot_->rescaleAxes();
        loss_plot_->replot(QCustomPlot::rpQueuedReplot);
    });
    connect(&job_, &Job::failed, this, [this](const QString& m) { log(tr("failed: %1").arg(m)); });
    connect(&job_, &Job::cancelled, this, [this] { log(tr("cancelled; the loaded model is unchanged")); });
    connect(&job_, &Job::finished, this, [this] { run_->setEnabled(context_.model() != nullptr); });
    connect(&job_, &QuantizeJob::quantized, this, [this](std::shared_ptr<const RunResult> r) {
        QString text = tr("<b>%1</b> in %2 s: salient %3%, bits/weight headline %4, with index %5, measured %6")
                           .arg(r->method).arg(r->seconds, 0, 'f', 1).arg(100.0 * r->salient_ratio, 0, 'f', 2)
                           .arg(r->bits.headline, 0, 'f', 3).arg(r->bits.with_index, 0, 'f', 3).arg(r->bits.measured, 0, 'f', 3);
        if (r->ppl_after > 0)
            text += tr("<br>Perplexity (%1 windows): <b>%2 → %3</b>").arg(r->eval_windows).arg(r->ppl_before, 0, 'f', 3).arg(r->ppl_after, 0, 'f', 3);
        result_->setText(text);
        log(QString(text).replace("<br>", " ").remove(QRegularExpression("<[^>]*>")));
        context_.setRun(r);
    });
    connect(&context_, &StudioContext::modelChanged, this, [this] { run_->setEnabled(context_.model() && !job_.running()); });
    run_->setEnabled(context_.model() != nullptr);
}

void RunPage::setMethod(const QString& method) { method_->setCurrentIndex(method_->findData(method)); }

void RunPage::start()
{
    if (!context_.model())
        return;
    RunRequest r;
    r.plan = context_.plan();
    const QString m = method_->currentData().toString();
    r.qat = m == "qat";
    if (!r.qat)
        set_default_method(r.plan, parse_method(m.toStdString()));
    r.plan.config.nsamples = nsamples_->value();
    r.plan.config.blocksize = blocksize_->value();
    r.plan.config.percdamp = percdamp_->value();
    r.plan.config.layer.bits = gptq_bits_->value();
    r.plan.config.seed = static_cast<std::uint64_t>(seed_->value());
    r.qat_steps = qat_steps_->value();
    r.qat_lr = qat_lr_->value();
    r.qat_kd = qat_kd_->value();
    r.calibration_text = context_.settings().calibration_text;
    const int windows = eval_->currentData().toInt();
    if (windows >= 0)
        r.eval_text = context_.settings().eval_text;
    r.eval_windows = std::max(windows, 0);
    try {
        job_.start(context_.model(), r);
    } catch (const std::exception& e) {
        log(tr("cannot start: %1").arg(QString::fromStdString(e.what())));
    }
}

void RunPage::log(const QString& line)
{
    log_->appendPlainText(QDateTime::currentDateTime().toString("HH:mm:ss  ") + line);
}

} // namespace pbllm
