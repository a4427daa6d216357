#include "widgets/pages.h"
#include "widgets/studio_context.h"

#include <QCheckBox>
#include <QDir>
#include <QFileDialog>
#include <QFileInfo>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QMessageBox>
#include <QPushButton>
#include <QVBoxLayout>

namespace pbllm {

ExportPage::ExportPage(StudioContext& context, QWidget* parent) : QWidget(parent), context_(context)
{
    auto* layout = new QVBoxLayout(this);
    auto* form = new QFormLayout;
    auto* path_row = new QHBoxLayout;
    path_ = new QLineEdit;
    auto* browse = new QPushButton(tr("…"));
    path_row->addWidget(path_, 1);
    path_row->addWidget(browse);
    hf_ = new QCheckBox(tr("Also write a dequantized Hugging Face folder (safetensors)"));
    hf_dir_ = new QLineEdit;
    hf_dir_->setEnabled(false);
    export_ = new QPushButton(tr("Export"));
    export_->setEnabled(false);
    progress_ = new JobProgress;
    progress_->attach(&job_);
    result_ = new QLabel(tr("Run a quantization first; the packed file stores bit-packed signs, the sparse salient "
                            "weights with their index, and FP16 scales."));
    result_->setWordWrap(true);
    result_->setTextInteractionFlags(Qt::TextSelectableByMouse);
    form->addRow(tr("Packed checkpoint (.pbllm.h5)"), path_row);
    form->addRow(hf_);
    form->addRow(tr("Folder"), hf_dir_);
    form->addRow(export_);
    form->addRow(progress_);
    layout->addLayout(form);
    layout->addWidget(result_);
    layout->addStretch();

    connect(browse, &QPushButton::clicked, this, [this] {
        const QString f = QFileDialog::getSaveFileName(this, tr("Export packed checkpoint"), path_->text(),
                                                       tr("PB-LLM checkpoint (*.pbllm.h5)"), nullptr,
                                                       QFileDialog::DontConfirmOverwrite); // asked in exportTo
        if (!f.isEmpty())
            path_->setText(f);
    });
    connect(hf_, &QCheckBox::toggled, hf_dir_, &QLineEdit::setEnabled);
    connect(export_, &QPushButton::clicked, this, [this] { exportTo(path_->text()); });
    connect(&context_, &StudioContext::runChanged, this, [this] {
        export_->setEnabled(context_.run() != nullptr);
        if (context_.model() && path_->text().isEmpty()) {
            const QFileInfo source(context_.model()->path);
            path_->setText(QDir::home().filePath(source.completeBaseName() + ".pbllm.h5"));
            hf_dir_->setText(QDir::home().filePath(source.completeBaseName() + "-dequantized"));
        }
    });
    connect(&job_, &ExportJob::exported, this, [this](const ExportResult& r) {
        result_->setText(tr("Wrote <b>%1</b>: %2 (%3x smaller than FP16). Measured %4 bits per quantized weight "
                            "(headline %5, with index %6)%7")
                             .arg(r.path.toHtmlEscaped(), human_size(r.file_bytes))
                             .arg(r.compression_vs_fp16, 0, 'f', 2).arg(r.bits.measured, 0, 'f', 3)
                             .arg(r.bits.headline, 0, 'f', 3).arg(r.bits.with_index, 0, 'f', 3)
                             .arg(r.hf_dir.isEmpty() ? QString() : tr("; dequantized copy in %1").arg(r.hf_dir.toHtmlEscaped())));
        Q_EMIT context_.status(tr("Exported %1").arg(r.path));
    });
    connect(&job_, &Job::failed, this, [this](const QString& m) { result_->setText(tr("Export failed: %1").arg(m.toHtmlEscaped())); });
    connect(&job_, &Job::started, this, [this] { export_->setEnabled(false); });
    connect(&job_, &Job::finished, this, [this] { export_->setEnabled(context_.run() != nullptr); });
}

void ExportPage::exportTo(const QString& path, bool overwrite)
{
    if (path.isEmpty() || !context_.run())
        return;
    path_->setText(path);
    if (!overwrite && QFileInfo::exists(path)) {
        if (QMessageBox::question(this, tr("Export"), tr("%1 exists. Replace it?").arg(path)) != QMessageBox::Yes)
            return;
        overwrite = true;
    }
    try {
        job_.start(context_.run(), *context_.model(), path, overwrite, hf_->isChecked() ? hf_dir_->text() : QString());
    } catch (const std::exception& e) {
        result_->setText(tr("Export refused: %1").arg(QString::fromStdString(e.what()).toHtmlEscaped()));
    }
}

} // namespace pbllm
