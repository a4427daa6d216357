#include "widgets/layer_tree_model.h"
#include "widgets/pages.h"
#include "widgets/studio_context.h"

#include <QHeaderView>
#include <QLabel>
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
    connect(tree_->selectionModel(), &QItemSelectionModel::currentChanged, this, [this](const QModelIndex& current) {
        const int linear = current.siblingAtColumn(0).data(LayerTreeModel::LinearIndexRole).toInt();
        if (linear >= 0)
            context_.selectLinear(linear);
    });
}

void ModelPage::refresh()
{
    const auto& m = context_.model();
    tree_model_->setModel(m);
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
