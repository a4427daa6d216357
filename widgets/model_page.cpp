#include "widgets/layer_tree_model.h"
#include "widgets/pages.h"
#include "widgets/studio_context.h"

#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QPushButton>
#include <QSortFilterProxyModel>
#include <QTreeView>
#include <QVBoxLayout>

namespace pbllm {

ModelPage::ModelPage(StudioContext& context, QWidget* parent) : QWidget(parent), context_(context)
{
    auto* layout = new QVBoxLayout(this);
    summary_ = new QLabel(tr("No model loaded. Use File > Open or drop a model file or folder here."));
    summary_->setTextInteractionFlags(Qt::TextSelectableByMouse);
    summary_->setWordWrap(true);
    layout->addWidget(summary_);
    auto* stats_row = new QHBoxLayout;
    stats_progress_ = new QLabel;
    stats_toggle_ = new QPushButton;
    stats_row->addWidget(stats_progress_, 1);
    stats_row->addWidget(stats_toggle_);
    layout->addLayout(stats_row);
    connect(stats_toggle_, &QPushButton::clicked, this, [this] {
        context_.stats().setBackground(!context_.stats().background());
        showStatsProgress();
    });
    tree_model_ = new LayerTreeModel(this);
    auto* proxy = new QSortFilterProxyModel(this);
    proxy->setSourceModel(tree_model_);
    proxy->setSortRole(Qt::EditRole); // numbers sort as numbers
    tree_ = new QTreeView;
    tree_->setModel(proxy);
    tree_->setSortingEnabled(true);
    tree_->sortByColumn(LayerTreeModel::Name, Qt::AscendingOrder);
    tree_->setAlternatingRowColors(true);
    tree_->setUniformRowHeights(true);
    tree_->header()->setSectionResizeMode(QHeaderView::ResizeToContents);
    layout->addWidget(tree_, 1);
    connect(&context_, &StudioContext::modelChanged, this, &ModelPage::refresh);
    connect(&context_.stats(), &LinearStatsService::statsReady, tree_model_, &LayerTreeModel::statsChanged);
    connect(&context_.stats(), &LinearStatsService::progress, this, &ModelPage::showStatsProgress);
    connect(tree_->selectionModel(), &QItemSelectionModel::currentChanged, this, [this](const QModelIndex& current) {
        const int linear = current.siblingAtColumn(0).data(LayerTreeModel::LinearIndexRole).toInt();
        if (linear >= 0)
            context_.selectLinear(linear);
    });
}

void ModelPage::showStatsProgress()
{
    const LinearStatsService& stats = context_.stats();
    const bool busy = context_.model() && !stats.complete();
    stats_progress_->setVisible(context_.model() != nullptr);
    stats_toggle_->setVisible(busy);
    if (!context_.model())
        return;
    if (!busy) {
        stats_progress_->setText(tr("Weight statistics of all %1 Linears computed").arg(stats.total()));
        return;
    }
    stats_progress_->setText(stats.background()
                                 ? tr("Weight statistics: %1 of %2 Linears computed in the background (a selected Linear goes first)")
                                       .arg(stats.computed()).arg(stats.total())
                                 : tr("Weight statistics: %1 of %2 Linears computed; stopped (selected Linears are still computed)")
                                       .arg(stats.computed()).arg(stats.total()));
    stats_toggle_->setText(stats.background() ? tr("Stop") : tr("Resume"));
}

QString ModelPage::summaryText() const { return summary_->text(); }

void ModelPage::refresh()
{
    const auto& m = context_.model();
    tree_model_->setModel(m, &context_.stats());
    showStatsProgress();
    if (!m) {
        summary_->setText(tr("No model loaded."));
        return;
    }
    QString html = QStringLiteral("<table cellspacing=4>");
    for (const auto& [label, value] : m->summary)
        html += QStringLiteral("<tr><td><b>%1</b></td><td>%2</td></tr>").arg(label.toHtmlEscaped(), value.toHtmlEscaped());
    summary_->setText(html + QStringLiteral("</table>"));
    if (m->n_layers > 0)
        tree_->expand(tree_->model()->index(0, 0));
}

} // namespace pbllm
