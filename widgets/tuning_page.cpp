#include "widgets/pages.h"
#include "core/quant/registry.h"
#include "core/quant/settings.h"
#include "widgets/plan_table_model.h"
#include "widgets/qcustomplot_include.h"
#include "widgets/studio_context.h"

#include <QComboBox>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QPushButton>
#include <QSignalBlocker>
#include <QSlider>
#include <QSplitter>
#include <QTableView>
#include <QVBoxLayout>

namespace pbllm {

namespace {
constexpr int kSliderSteps = 1000; // 0.05% per step over 0..50%
constexpr double kMaxRatio = 0.5;
constexpr qint64 kReplotIntervalMs = 40; // at most 25 redraws per second while dragging

} // namespace

TuningPage::TuningPage(StudioContext& context, QWidget* parent) : QWidget(parent), context_(context)
{
    auto* layout = new QVBoxLayout(this);
    auto* controls = new QHBoxLayout;
    ratio_ = new QSlider(Qt::Horizontal);
    ratio_->setRange(0, kSliderSteps);
    ratio_->setValue(static_cast<int>(context_.plan().config.layer.salient_ratio / kMaxRatio * kSliderSteps));
    ratio_label_ = new QLabel;
    ratio_label_->setMinimumWidth(110);
    bits_ = new QComboBox;
    for (int b : {2, 3, 4, 5, 6, 7, 8, 16})
        bits_->addItem(b == 16 ? tr("FP16") : tr("%1-bit").arg(b), b);
    bits_->setCurrentIndex(bits_->findData(context_.plan().config.layer.salient_bits));
    method_ = new QComboBox;
    for (const MethodInfo& m : methods())
        if (m.quantize) {
            method_->addItem(m.name, m.name);
            method_->setItemData(method_->count() - 1, QString(m.summary), Qt::ToolTipRole);
        }
    auto* block_row = new QHBoxLayout;
    block_row->addWidget(new QLabel(tr("Method")));
    block_row->addWidget(method_);
    // A combo per choice setting, from the settings' table: a new option of a method appears here.
    for (const SettingInfo& s : layer_settings()) {
        if (s.kind != SettingKind::Choice || std::string(s.key) == "method")
            continue;
        auto* combo = new QComboBox;
        for (const std::string& c : s.choices())
            combo->addItem(QString::fromStdString(c), QString::fromStdString(c));
        combo->setToolTip(QString::fromStdString(s.describe()));
        combo->setObjectName(s.flag);
        setting_combos_.push_back(combo);
        setting_rows_.push_back(&s);
        block_row->addWidget(new QLabel(s.label));
        block_row->addWidget(combo);
    }
    block_row->addStretch(1);
    auto* reset = new QPushButton(tr("Reset overrides"));
    reset->setToolTip(tr("Selected rows, or all rows when none is selected"));
    controls->addWidget(new QLabel(tr("Salient")));
    controls->addWidget(ratio_, 1);
    controls->addWidget(ratio_label_);
    controls->addWidget(new QLabel(tr("Salient bits")));
    controls->addWidget(bits_);
    controls->addWidget(reset);
    layout->addLayout(block_row);
    layout->addLayout(controls);

    bits_label_ = new QLabel;
    size_label_ = new QLabel;
    bits_label_->setTextInteractionFlags(Qt::TextSelectableByMouse);
    layout->addWidget(bits_label_);
    layout->addWidget(size_label_);

    auto* split = new QSplitter(Qt::Horizontal);
    table_model_ = new PlanTableModel(context_, this);
    table_ = new QTableView;
    table_->setModel(table_model_);
    table_->setSelectionBehavior(QAbstractItemView::SelectRows);
    table_->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
    table_->verticalHeader()->setDefaultSectionSize(22);
    error_plot_ = new QCustomPlot;
    error_plot_->setMinimumSize(420, 260);
    error_bars_ = new QCPBars(error_plot_->xAxis, error_plot_->yAxis);
    error_bars_->setPen(Qt::NoPen);
    error_bars_->setBrush(QColor(200, 90, 60));
    error_plot_->xAxis->setLabel(tr("Linear (quantization order)"));
    error_plot_->yAxis->setLabel(tr("preview error"));
    split->addWidget(table_);
    split->addWidget(error_plot_);
    split->setStretchFactor(1, 1);
    layout->addWidget(split, 1);

    replot_timer_.setSingleShot(true);
    connect(&replot_timer_, &QTimer::timeout, this, &TuningPage::replot);
    connect(ratio_, &QSlider::valueChanged, this, &TuningPage::applyControls);
    // Sampled previews follow the drag; the release asks for the exact figures.
    connect(ratio_, &QSlider::sliderReleased, this, &TuningPage::requestPreview);
    connect(&context_.previews(), &PreviewService::exactProgress, this, [this](quint64 id, int done, int total) {
        exact_id_ = id;
        exact_done_ = done;
        exact_total_ = total;
        if (id == latest_.id && !latest_.exact())
            replot();
    });
    connect(bits_, qOverload<int>(&QComboBox::currentIndexChanged), this, &TuningPage::applyControls);
    connect(method_, qOverload<int>(&QComboBox::currentIndexChanged), this, &TuningPage::applyControls);
    for (QComboBox* combo : setting_combos_)
        connect(combo, qOverload<int>(&QComboBox::currentIndexChanged), this, &TuningPage::applyControls);
    connect(&context_, &StudioContext::planChanged, this, &TuningPage::syncMethodControls);
    connect(reset, &QPushButton::clicked, this, [this] {
        QList<int> rows;
        for (const QModelIndex& i : table_->selectionModel()->selectedRows())
            rows << i.row();
        table_model_->resetOverrides(rows);
    });
    connect(&context_, &StudioContext::modelChanged, table_model_, &PlanTableModel::refresh);
    connect(&context_, &StudioContext::planChanged, this, &TuningPage::requestPreview);
    connect(&context_.previews(), &PreviewService::prepared, this, &TuningPage::requestPreview);
    connect(&context_.previews(), &PreviewService::previewReady, this, &TuningPage::showPreview);
    syncMethodControls();
    applyControls();
}

void TuningPage::syncMethodControls()
{
    const QuantPlan& plan = context_.plan();
    const QSignalBlocker block(method_);
    method_->setCurrentIndex(method_->findData(QString::fromStdString(to_string(plan.config.layer.method))));
    const MethodInfo& m = method_info(plan.config.layer.method);
    for (std::size_t i = 0; i < setting_combos_.size(); ++i) {
        const QSignalBlocker quiet(setting_combos_[i]);
        setting_combos_[i]->setCurrentIndex(static_cast<int>(setting_rows_[i]->get(plan.config.layer)));
        setting_combos_[i]->setEnabled(m.reads(setting_rows_[i]->key));
    }
    // What the method does not read stays visible but off (the block binarizers search their
    // salient columns, at 2 bits).
    ratio_->setEnabled(m.reads("salient_ratio"));
    bits_->setEnabled(m.reads("salient_bits"));
}

void TuningPage::applyControls()
{
    QuantPlan plan = context_.plan();
    LayerQuantSettings& s = plan.config.layer;
    s.salient_ratio = kMaxRatio * ratio_->value() / kSliderSteps;
    s.salient_bits = bits_->currentData().toInt();
    for (std::size_t i = 0; i < setting_combos_.size(); ++i)
        setting_rows_[i]->set(s, setting_combos_[i]->currentIndex());
    if (const MethodInfo* m = find_method(method_->currentData().toString().toStdString()))
        set_default_method(plan, m->id);
    ratio_label_->setText(QStringLiteral("%1%").arg(100.0 * s.salient_ratio, 0, 'f', 2));
    context_.setPlan(plan);
}

void TuningPage::requestPreview()
{
    if (!context_.model() || !context_.previews().ready())
        return;
    exact_id_ = 0;
    if (ratio_->isSliderDown())
        context_.previews().request(context_.plan());
    else
        context_.previews().requestExact(context_.plan());
}

void TuningPage::showPreview(const PreviewSnapshot& snapshot)
{
    latest_ = snapshot;
    table_model_->setPreview(snapshot);
    // Throttle, don't delay: redraw now unless the last redraw was under 40 ms ago, in which
    // case once when those 40 ms are up (with the newest snapshot by then).
    if (replot_timer_.isActive())
        return;
    const qint64 since = last_replot_.isValid() ? last_replot_.elapsed() : kReplotIntervalMs;
    if (since >= kReplotIntervalMs)
        replot();
    else
        replot_timer_.start(static_cast<int>(kReplotIntervalMs - since));
}

void TuningPage::replot()
{
    const auto& m = context_.model();
    if (!m)
        return;
    const PreviewSnapshot& s = latest_;
    QVector<double> x, y;
    const bool hessian = !s.linears.empty() && s.linears.front().hessian_error >= 0;
    for (const LinearPreview& p : s.linears) {
        x << p.linear;
        y << (hessian ? p.hessian_error : p.weight_error);
    }
    error_bars_->setData(x, y, true);
    error_plot_->yAxis->setLabel(hessian ? tr("H-weighted relative error (diag)") : tr("relative weight error"));
    error_plot_->rescaleAxes();
    error_plot_->yAxis->setRangeLower(0);
    error_plot_->replot(QCustomPlot::rpQueuedReplot);
    QString kind = tr("exact");
    if (!s.exact()) {
        kind = tr("estimated from %1% of each Linear's rows").arg(100.0 * s.sampled_fraction, 0, 'g', 2);
        if (exact_id_ == s.id && exact_total_ > 0)
            kind += tr("; exact figures: %1 of %2 Linears").arg(exact_done_).arg(exact_total_);
        else if (ratio_->isSliderDown())
            kind += tr("; exact on release");
    }
    bits_label_->setText(tr("Bits per weight of the quantized Linears: headline %1 · with bitmap %2 · with index %3 · "
                            "estimated stored %4   (preview %5 ms, %6)")
                             .arg(s.headline_bits, 0, 'f', 3).arg(s.bitmap_bits, 0, 'f', 3).arg(s.index_bits, 0, 'f', 3)
                             .arg(s.estimated_bits, 0, 'f', 3).arg(s.milliseconds, 0, 'f', 1).arg(kind));
    size_label_->setText(tr("Projected file size %1 vs FP16 %2 (%3x smaller)")
                             .arg(human_size(s.estimated_file_bytes), human_size(m->fp16_bytes))
                             .arg(s.estimated_file_bytes > 0 ? static_cast<double>(m->fp16_bytes) / s.estimated_file_bytes : 0.0, 0, 'f', 2));
    last_replot_.start();
    ++replots_;
    Q_EMIT chartUpdated();
}

} // namespace pbllm
