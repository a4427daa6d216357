#pragma once
// The Tuning page's per-Linear table: the effective ratio and salient bits from the plan
// (editable: an edit adds an exact-name override rule), whether it is overridden, and the latest
// preview error. Edits go back to the StudioContext's plan.
#include "workers/results.h"

#include <QAbstractTableModel>

#include <memory>

namespace pbllm {

class StudioContext;

class PlanTableModel : public QAbstractTableModel {
    Q_OBJECT
public:
    enum Column { Name, Ratio, Bits, Overridden, WeightError, HessianError, ColumnCount };

    explicit PlanTableModel(StudioContext& context, QObject* parent = nullptr);
    /// Re-reads the model and plan (model reset).
    void refresh();
    void setPreview(const PreviewSnapshot& snapshot);
    /// Removes the override rules of these rows (all rows when empty).
    void resetOverrides(const QList<int>& rows);

    int rowCount(const QModelIndex& parent = {}) const override;
    int columnCount(const QModelIndex& parent = {}) const override;
    QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
    bool setData(const QModelIndex& index, const QVariant& value, int role = Qt::EditRole) override;
    Qt::ItemFlags flags(const QModelIndex& index) const override;
    QVariant headerData(int section, Qt::Orientation orientation, int role = Qt::DisplayRole) const override;

private:
    bool overridden(int row) const;
    StudioContext& context_;
    std::shared_ptr<const LoadedModel> model_;
    PreviewSnapshot preview_;
};

/// The plan with an exact-name rule for `linear` merged in (created if absent).
PlanRule& override_rule(QuantPlan& plan, const std::string& linear);

} // namespace pbllm
