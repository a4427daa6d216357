#pragma once
// Decoder blocks -> Linears, with shape, parameter count and weight statistics; set whole from
// a LoadedModel (one model reset).
#include "workers/results.h"

#include <QAbstractItemModel>

#include <memory>

namespace pbllm {

class LayerTreeModel : public QAbstractItemModel {
    Q_OBJECT
public:
    enum Column { Name, Shape, Parameters, Mean, Std, AbsMax, Kurtosis, Outliers, ColumnCount };
    /// Role holding the LinearInfo index of a Linear row (-1 for block rows).
    static constexpr int LinearIndexRole = Qt::UserRole + 1;

    using QAbstractItemModel::QAbstractItemModel;
    void setModel(std::shared_ptr<const LoadedModel> model);

    QModelIndex index(int row, int column, const QModelIndex& parent = {}) const override;
    QModelIndex parent(const QModelIndex& child) const override;
    int rowCount(const QModelIndex& parent = {}) const override;
    int columnCount(const QModelIndex& parent = {}) const override;
    QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
    QVariant headerData(int section, Qt::Orientation orientation, int role = Qt::DisplayRole) const override;

private:
    int linearsPerBlock() const;
    std::shared_ptr<const LoadedModel> model_;
};

} // namespace pbllm
