#pragma once
// Decoder blocks -> Linears, with shape, parameter count and weight statistics; set whole from
// a LoadedModel (one model reset); statistics fill in as LinearStatsService computes them.
#include "workers/results.h"

#include <QAbstractItemModel>

#include <memory>

namespace pbllm {

class LinearStatsService;

class LayerTreeModel : public QAbstractItemModel {
    Q_OBJECT
public:
    enum Column { Name, Shape, Parameters, Mean, Std, AbsMax, Kurtosis, Outliers, ColumnCount };
    /// Role holding the LinearInfo index of a Linear row (-1 for block rows).
    static constexpr int LinearIndexRole = Qt::UserRole + 1;

    using QAbstractItemModel::QAbstractItemModel;
    /// `stats` (may be null) supplies the statistics columns; it must outlive this model.
    void setModel(std::shared_ptr<const LoadedModel> model, const LinearStatsService* stats = nullptr);
    /// The statistics of `linear` arrived: its row changes.
    void statsChanged(int linear);

    QModelIndex index(int row, int column, const QModelIndex& parent = {}) const override;
    QModelIndex parent(const QModelIndex& child) const override;
    int rowCount(const QModelIndex& parent = {}) const override;
    int columnCount(const QModelIndex& parent = {}) const override;
    QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
    QVariant headerData(int section, Qt::Orientation orientation, int role = Qt::DisplayRole) const override;

private:
    int linearsPerBlock() const;
    std::shared_ptr<const LoadedModel> model_;
    const LinearStatsService* stats_ = nullptr;
};

} // namespace pbllm
