#include "widgets/layer_tree_model.h"

#include "workers/linear_stats_service.h"

#include <QLocale>

namespace pbllm {

// Internal ids: 0 for block rows, 1 + block for Linear rows (so parent() can find the block).

void LayerTreeModel::setModel(std::shared_ptr<const LoadedModel> model, const LinearStatsService* stats)
{
    beginResetModel();
    model_ = std::move(model);
    stats_ = stats;
    endResetModel();
}

void LayerTreeModel::statsChanged(int linear)
{
    const int per_block = linearsPerBlock();
    if (!model_ || per_block == 0 || linear < 0 || linear >= static_cast<int>(model_->linears.size()))
        return;
    const QModelIndex block = index(linear / per_block, 0);
    Q_EMIT dataChanged(index(linear % per_block, Mean, block), index(linear % per_block, Outliers, block));
}

int LayerTreeModel::linearsPerBlock() const
{
    return model_ && model_->n_layers > 0 ? static_cast<int>(model_->linears.size()) / model_->n_layers : 0;
}

QModelIndex LayerTreeModel::index(int row, int column, const QModelIndex& parent) const
{
    if (!hasIndex(row, column, parent))
        return {};
    return createIndex(row, column, parent.isValid() ? static_cast<quintptr>(parent.row() + 1) : 0);
}

QModelIndex LayerTreeModel::parent(const QModelIndex& child) const
{
    if (!child.isValid() || child.internalId() == 0)
        return {};
    return createIndex(static_cast<int>(child.internalId() - 1), 0, static_cast<quintptr>(0));
}

int LayerTreeModel::rowCount(const QModelIndex& parent) const
{
    if (!model_)
        return 0;
    if (!parent.isValid())
        return model_->n_layers;
    if (parent.internalId() == 0 && parent.column() == 0)
        return linearsPerBlock();
    return 0;
}

int LayerTreeModel::columnCount(const QModelIndex&) const { return ColumnCount; }

QVariant LayerTreeModel::data(const QModelIndex& index, int role) const
{
    if (!index.isValid() || !model_)
        return {};
    if (index.internalId() == 0) { // a decoder block: totals
        const int block = index.row();
        std::int64_t params = 0;
        for (int i = 0; i < linearsPerBlock(); ++i)
            params += model_->linears[static_cast<std::size_t>(block * linearsPerBlock() + i)].weight_count();
        if (role == LinearIndexRole)
            return -1;
        if (role == Qt::DisplayRole && index.column() == Name)
            return tr("block %1").arg(block);
        if (role == Qt::DisplayRole && index.column() == Parameters)
            return QLocale().toString(static_cast<qlonglong>(params));
        if (role == Qt::EditRole && index.column() == Parameters) // sort key
            return static_cast<qlonglong>(params);
        if (role == Qt::EditRole && index.column() == Name)
            return block;
        return {};
    }
    const int linear = static_cast<int>(index.internalId() - 1) * linearsPerBlock() + index.row();
    const LinearInfo& l = model_->linears[static_cast<std::size_t>(linear)];
    const LinearStats* st = stats_ ? stats_->stats(linear) : nullptr;
    if (role == LinearIndexRole)
        return linear;
    if (index.column() >= Mean && (!st || !st->error.isEmpty())) {
        if (role == Qt::ToolTipRole)
            return st ? st->error : tr("computing the statistics (selected Linears first)");
        if (role == Qt::DisplayRole)
            return st ? tr("error") : QStringLiteral("…");
        if (role == Qt::TextAlignmentRole)
            return QVariant(Qt::AlignRight | Qt::AlignVCenter);
        return {};
    }
    if (role == Qt::TextAlignmentRole && index.column() != Name)
        return QVariant(Qt::AlignRight | Qt::AlignVCenter);
    if (role == Qt::ToolTipRole)
        return l.name;
    const bool display = role == Qt::DisplayRole;
    if (!display && role != Qt::EditRole)
        return {};
    switch (index.column()) {
    case Name: return display ? QVariant(l.kind) : QVariant(linear);
    case Shape: return display ? QVariant(QStringLiteral("%1 x %2").arg(l.rows).arg(l.cols)) : QVariant(static_cast<qlonglong>(l.weight_count()));
    case Parameters: return display ? QVariant(QLocale().toString(static_cast<qlonglong>(l.weight_count()))) : QVariant(static_cast<qlonglong>(l.weight_count()));
    case Mean: return display ? QVariant(QString::number(st->mean, 'g', 3)) : QVariant(st->mean);
    case Std: return display ? QVariant(QString::number(st->std, 'g', 3)) : QVariant(st->std);
    case AbsMax: return display ? QVariant(QString::number(st->abs_max, 'g', 3)) : QVariant(st->abs_max);
    case Kurtosis: return display ? QVariant(QString::number(st->kurtosis, 'f', 2)) : QVariant(st->kurtosis);
    case Outliers: return display ? QVariant(QString::number(100.0 * st->outlier_fraction, 'f', 2) + QLatin1Char('%')) : QVariant(st->outlier_fraction);
    default: return {};
    }
}

QVariant LayerTreeModel::headerData(int section, Qt::Orientation orientation, int role) const
{
    if (orientation != Qt::Horizontal || role != Qt::DisplayRole)
        return {};
    static const char* names[] = {"Linear", "Shape", "Parameters", "Mean", "Std", "|max|", "Kurtosis", "Outliers (>3σ)"};
    return section >= 0 && section < ColumnCount ? tr(names[section]) : QVariant();
}

} // namespace pbllm
