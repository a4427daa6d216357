#include "widgets/pages.h"
#include "widgets/studio_context.h"

#include "core/tokenizer.h"

#include <QDoubleSpinBox>
#include <QGridLayout>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QPushButton>
#include <QSpinBox>
#include <QTextBrowser>
#include <QVBoxLayout>

#include <cmath>

namespace pbllm {

ComparePage::ComparePage(StudioContext& context, QWidget* parent) : QWidget(parent), context_(context)
{
    auto* layout = new QVBoxLayout(this);
    auto* controls = new QHBoxLayout;
    prompt_ = new QLineEdit(tr("Once upon a time"));
    temperature_ = new QDoubleSpinBox;
    temperature_->setRange(0.0, 2.0);
    temperature_->setSingleStep(0.1);
    top_p_ = new QDoubleSpinBox;
    top_p_->setRange(0.01, 1.0);
    top_p_->setSingleStep(0.05);
    top_p_->setValue(0.9);
    seed_ = new QSpinBox;
    seed_->setRange(0, 1 << 30);
    max_tokens_ = new QSpinBox;
    max_tokens_->setRange(1, 4096);
    max_tokens_->setValue(128);
    generate_ = new QPushButton(tr("Generate"));
    generate_->setEnabled(false);
    controls->addWidget(new QLabel(tr("Prompt")));
    controls->addWidget(prompt_, 1);
    controls->addWidget(new QLabel(tr("Temperature")));
    controls->addWidget(temperature_);
    controls->addWidget(new QLabel(tr("top-p")));
    controls->addWidget(top_p_);
    controls->addWidget(new QLabel(tr("Seed")));
    controls->addWidget(seed_);
    controls->addWidget(new QLabel(tr("Tokens")));
    controls->addWidget(max_tokens_);
    controls->addWidget(generate_);
    layout->addLayout(controls);
    auto* grid = new QGridLayout;
    full_text_ = new QTextBrowser;
    compressed_text_ = new QTextBrowser;
    full_stats_ = new QLabel;
    compressed_stats_ = new QLabel;
    grid->addWidget(new QLabel(tr("<b>Full precision</b>")), 0, 0);
    grid->addWidget(new QLabel(tr("<b>Compressed</b>")), 0, 1);
    grid->addWidget(full_text_, 1, 0);
    grid->addWidget(compressed_text_, 1, 1);
    grid->addWidget(full_stats_, 2, 0);
    grid->addWidget(compressed_stats_, 2, 1);
    layout->addLayout(grid, 1);
    nll_ = new QLabel;
    layout->addWidget(nll_);
    auto* eval_row = new QHBoxLayout;
    eval_text_ = new QLineEdit(StudioContext::findSharedData(QStringLiteral("data/tinystories/tinystories_val.txt")));
    eval_windows_ = new QSpinBox;
    eval_windows_->setRange(0, 1 << 20);
    eval_windows_->setValue(16);
    eval_windows_->setToolTip(tr("Windows of the model's context to evaluate (0 = the whole text)"));
    evaluate_ = new QPushButton(tr("Evaluate perplexity"));
    evaluate_->setEnabled(false);
    evaluation_ = new QLabel;
    eval_row->addWidget(new QLabel(tr("Text")));
    eval_row->addWidget(eval_text_, 1);
    eval_row->addWidget(new QLabel(tr("Windows")));
    eval_row->addWidget(eval_windows_);
    eval_row->addWidget(evaluate_);
    layout->addLayout(eval_row);
    layout->addWidget(evaluation_);

    auto stream = [](QTextBrowser* view) {
        return [view](const QString& piece) {
            QTextCursor c(view->document());
            c.movePosition(QTextCursor::End);
            c.insertText(piece);
        };
    };
    connect(&full_, &GenerateJob::token, full_text_, stream(full_text_));
    connect(&compressed_, &GenerateJob::token, compressed_text_, stream(compressed_text_));
    connect(&full_, &GenerateJob::generated, this, [this](const GenerationOutcome& o) {
        full_outcome_ = o;
        finishIfDone();
    });
    connect(&compressed_, &GenerateJob::generated, this, [this](const GenerationOutcome& o) {
        compressed_outcome_ = o;
        finishIfDone();
    });
    for (GenerateJob* job : {&full_, &compressed_}) {
        connect(job, &Job::failed, this, [this](const QString& m) {
            nll_->setText(tr("Generation failed: %1").arg(m));
            updateEnabled();
            Q_EMIT comparisonDone();
        });
        connect(job, &Job::cancelled, this, [this] {
            updateEnabled();
            Q_EMIT comparisonDone();
        });
    }
    connect(&score_, &ScoreJob::scored, this, [this](double nll) {
        nll_->setText(tr("Full-precision model's NLL of the compressed output: %1 nats/token (perplexity %2)")
                          .arg(nll, 0, 'f', 3).arg(std::exp(nll), 0, 'f', 2));
        Q_EMIT comparisonDone();
    });
    connect(&score_, &Job::failed, this, [this](const QString& m) {
        nll_->setText(tr("Scoring failed: %1").arg(m));
        Q_EMIT comparisonDone();
    });
    connect(generate_, &QPushButton::clicked, this, &ComparePage::start);
    connect(evaluate_, &QPushButton::clicked, this, &ComparePage::evaluate);
    connect(&context_, &StudioContext::runChanged, this, &ComparePage::updateEnabled);
    connect(&context_, &StudioContext::modelChanged, this, &ComparePage::updateEnabled);
    auto show = [this](const QString& which) {
        return [this, which](const EvaluationOutcome& o) {
            evaluation_->setText(evaluation_->text() +
                                 tr("%1: perplexity %2 over %3 windows of %4 tokens, %5 tokens/s. ")
                                     .arg(which).arg(o.ppl, 0, 'f', 3).arg(o.windows).arg(o.seqlen)
                                     .arg(o.tokens_per_second, 0, 'f', 0));
            if (!evaluate_full_.running() && !evaluate_compressed_.running())
                updateEnabled();
        };
    };
    connect(&evaluate_full_, &EvaluateJob::evaluated, this, show(tr("Full precision")));
    connect(&evaluate_compressed_, &EvaluateJob::evaluated, this, show(tr("Compressed (from its bits)")));
    for (EvaluateJob* job : {&evaluate_full_, &evaluate_compressed_})
        connect(job, &Job::failed, this, [this](const QString& m) {
            evaluation_->setText(evaluation_->text() + tr("Evaluation failed: %1. ").arg(m));
            updateEnabled();
        });
}

std::shared_ptr<const Model> ComparePage::fullModel() const
{
    return context_.model() && !context_.model()->packed ? context_.model()->model : nullptr;
}

std::shared_ptr<const Model> ComparePage::compressedModel() const
{
    if (context_.run())
        return context_.run()->model;
    return context_.model() && context_.model()->packed ? context_.model()->model : nullptr;
}

void ComparePage::updateEnabled()
{
    generate_->setEnabled(compressedModel() != nullptr && !full_.running() && !compressed_.running());
    evaluate_->setEnabled(context_.model() != nullptr && !evaluate_full_.running() && !evaluate_compressed_.running());
}

void ComparePage::evaluate()
{
    if (!context_.model() || evaluate_full_.running() || evaluate_compressed_.running())
        return;
    evaluation_->clear();
    evaluate_->setEnabled(false);
    const auto& tokenizer = context_.model()->tokenizer;
    if (const auto full = fullModel())
        evaluate_full_.start(full, tokenizer, eval_text_->text(), eval_windows_->value());
    if (const auto compressed = compressedModel())
        evaluate_compressed_.start(compressed, tokenizer, eval_text_->text(), eval_windows_->value());
}

QString ComparePage::evaluationText() const { return evaluation_->text(); }

void ComparePage::start()
{
    const auto compressed = compressedModel();
    if (!compressed || full_.running() || compressed_.running())
        return;
    SamplerChoice s;
    s.temperature = static_cast<float>(temperature_->value());
    s.top_p = static_cast<float>(top_p_->value());
    s.seed = static_cast<std::uint64_t>(seed_->value());
    s.max_new_tokens = max_tokens_->value();
    full_outcome_.reset();
    compressed_outcome_.reset();
    full_text_->clear();
    compressed_text_->clear();
    nll_->clear();
    generate_->setEnabled(false);
    // The compressed model shares the tokenizer and runs from its bits.
    compared_full_ = fullModel();
    compared_tokenizer_ = context_.model()->tokenizer;
    if (compared_full_)
        full_.start(compared_full_, compared_tokenizer_, prompt_->text(), s);
    else
        full_outcome_ = GenerationOutcome{}; // a packed checkpoint opened alone: nothing to compare with
    compressed_.start(compressed, compared_tokenizer_, prompt_->text(), s);
}

QString ComparePage::statsText() const { return full_stats_->text() + QLatin1Char('\n') + compressed_stats_->text(); }

void ComparePage::finishIfDone()
{
    updateEnabled();
    if (!full_outcome_ || !compressed_outcome_)
        return;
    if (!compared_full_) {
        compressed_stats_->setText(QObject::tr("%1 tokens, %2 tok/s, memory %3")
                                       .arg(compressed_outcome_->tokens.size())
                                       .arg(compressed_outcome_->tokens_per_second, 0, 'f', 0)
                                       .arg(human_size(compressed_outcome_->memory_bytes)));
        full_stats_->setText(tr("Open the full-precision model and quantize it here to compare side by side."));
        Q_EMIT comparisonDone();
        return;
    }
    const GenerationOutcome& a = *full_outcome_;
    const GenerationOutcome& b = *compressed_outcome_;
    // Re-render both texts token by token, marking the first position where they differ.
    std::size_t diverge = 0;
    while (diverge < a.tokens.size() && diverge < b.tokens.size() && a.tokens[diverge] == b.tokens[diverge])
        ++diverge;
    auto render = [&](const GenerationOutcome& o) {
        QString html;
        for (std::size_t i = 0; i < o.tokens.size(); ++i) {
            const QString piece = QString::fromStdString(compared_tokenizer_->token_bytes(o.tokens[i])).toHtmlEscaped();
            html += i == diverge ? QStringLiteral("<span style='background:#f4c542'>%1</span>").arg(piece) : piece;
        }
        return html;
    };
    full_text_->setHtml(render(a));
    compressed_text_->setHtml(render(b));
    auto stats = [](const GenerationOutcome& o) {
        return QObject::tr("%1 tokens, %2 tok/s, memory %3")
            .arg(o.tokens.size()).arg(o.tokens_per_second, 0, 'f', 0).arg(human_size(o.memory_bytes));
    };
    const QString where = diverge < std::min(a.tokens.size(), b.tokens.size())
                              ? tr("; first divergence at token %1 (highlighted)").arg(diverge + 1)
                              : tr("; identical");
    full_stats_->setText(stats(a));
    compressed_stats_->setText(stats(b) + where);
    score_.start(compared_full_, b.prompt_tokens, b.tokens);
}

} // namespace pbllm
