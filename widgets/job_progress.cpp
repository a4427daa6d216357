#include "widgets/pages.h"

#include <QHBoxLayout>
#include <QLabel>
#include <QProgressBar>
#include <QPushButton>

namespace pbllm {

JobProgress::JobProgress(QWidget* parent) : QWidget(parent)
{
    auto* layout = new QHBoxLayout(this);
    layout->setContentsMargins(0, 0, 0, 0);
    bar_ = new QProgressBar;
    bar_->setRange(0, 1000);
    bar_->setTextVisible(false);
    stage_ = new QLabel(tr("idle"));
    stage_->setMinimumWidth(260);
    cancel_ = new QPushButton(tr("Cancel"));
    cancel_->setEnabled(false);
    layout->addWidget(bar_, 1);
    layout->addWidget(stage_, 2);
    layout->addWidget(cancel_);
}

void JobProgress::attach(Job* job)
{
    connect(cancel_, &QPushButton::clicked, job, &Job::cancel);
    connect(job, &Job::started, this, [this] {
        clock_.start();
        bar_->setValue(0);
        stage_->setText(tr("starting"));
        cancel_->setEnabled(true);
    });
    connect(job, &Job::progress, this, [this](double fraction, const QString& stage) {
        bar_->setValue(static_cast<int>(1000 * fraction));
        QString text = stage;
        const double elapsed = clock_.elapsed() / 1000.0;
        if (fraction > 0.02 && fraction < 1.0 && elapsed > 1.0)
            text += tr("  (ETA %1 s)").arg(elapsed * (1.0 - fraction) / fraction, 0, 'f', 0);
        stage_->setText(text);
    });
    connect(job, &Job::failed, this, [this](const QString& message) { stage_->setText(tr("failed: %1").arg(message)); });
    connect(job, &Job::cancelled, this, [this] { stage_->setText(tr("cancelled")); });
    connect(job, &Job::finished, this, [this] {
        cancel_->setEnabled(false);
        if (stage_->text().startsWith(tr("failed")) || stage_->text() == tr("cancelled"))
            return;
        bar_->setValue(1000);
        stage_->setText(tr("done in %1 s").arg(clock_.elapsed() / 1000.0, 0, 'f', 1));
    });
}

} // namespace pbllm
