#include "widgets/plan_table_model.h"

#include "widgets/studio_context.h"
#include "core/quant/registry.h"
#include "core/error.h"
#include "core/quant/settings.h"

#include <algorithm>

namespace pbllm {

PlanRule& override_rule(QuantPlan& plan, const std::string& linear)
{
    for (PlanRule& r : plan.rules)
        if (r.pattern == linear)
            return r;
    plan.rules.push_back(PlanRule{linear});
    return plan.rules.back();
}

namespace {

/// The setting the Bits column shows and edits: plain GPTQ's grid, or the salient weights'.
const char* bits_key(const LayerQuantSettings& s) { return method_info(s.method).reads("bits") ? "bits" : "salient_bits"; }

} // namespace

PlanTableModel::PlanTableModel(StudioContext& context, QObject* parent) : QAbstractTableModel(parent), context_(context)
{
    refresh();
}

void PlanTableModel::refresh()
{
    beginResetModel();
    model_ = context_.model();
    if (!model_ || preview_.linears.size() != model_->linears.size())
        preview_ = {};
    endResetModel();
}

void PlanTableModel::setPreview(const PreviewSnapshot& snapshot)
{
    if (!model_ || snapshot.linears.size() != model_->linears.size())
        return;
    preview_ = snapshot;
    Q_EMIT dataChanged(index(0, WeightError), index(rowCount() - 1, HessianError), {Qt::DisplayRole, Qt::EditRole});
}

void PlanTableModel::resetOverrides(const QList<int>& rows)
{
    QuantPlan plan = context_.plan();
    auto& rules = plan.rules;
    rules.erase(std::remove_if(rules.begin(), rules.end(), [&](const PlanRule& r) {
                    if (rows.isEmpty())
                        return true;
                    for (int row : rows)
                        if (model_ && row >= 0 && row < rowCount() && r.pattern == model_->linears[static_cast<std::size_t>(row)].name.toStdString())
                            return true;
                    return false;
                }),
                rules.end());
    drop_unread_strict_settings(plan); // the rules that read a plan-wide option may be gone
    context_.setPlan(plan);
    Q_EMIT dataChanged(index(0, 0), index(rowCount() - 1, ColumnCount - 1));
}

int PlanTableModel::rowCount(const QModelIndex& parent) const
{
    return parent.isValid() || !model_ ? 0 : static_cast<int>(model_->linears.size());
}

int PlanTableModel::columnCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : ColumnCount; }

bool PlanTableModel::overridden(int row) const
{
    const std::string name = model_->linears[static_cast<std::size_t>(row)].name.toStdString();
    const auto& rules = context_.plan().rules;
    return std::any_of(rules.begin(), rules.end(), [&](const PlanRule& r) { return glob_match(r.pattern, name); });
}

QVariant PlanTableModel::data(const QModelIndex& index, int role) const
{
    if (!index.isValid() || !model_ || index.row() >= rowCount())
        return {};
    const int row = index.row();
    const LinearInfo& info = model_->linears[static_cast<std::size_t>(row)];
    const LayerQuantSettings s = context_.plan().settings_for(info.name.toStdString());
    const bool have_preview = static_cast<std::size_t>(row) < preview_.linears.size();
    const LinearPreview* p = have_preview ? &preview_.linears[static_cast<std::size_t>(row)] : nullptr;
    if (role == Qt::TextAlignmentRole && index.column() != Name)
        return QVariant(Qt::AlignRight | Qt::AlignVCenter);
    if (role == Qt::ToolTipRole && index.column() == Name)
        return info.name;
    if (role != Qt::DisplayRole && role != Qt::EditRole)
        return {};
    const bool display = role == Qt::DisplayRole;
    // The block binarizers search their salient columns (2 bits): the preview's share, not a setting.
    const bool searched = !s.skip && stores_block_binary(s.method);
    switch (index.column()) {
    case Name: return QStringLiteral("%1.%2").arg(info.layer).arg(info.kind);
    case Ratio:
        if (s.skip)
            return display ? QVariant(tr("FP16")) : QVariant(1.0);
        if (searched) {
            if (!p)
                return display ? QVariant(tr("searched")) : QVariant(-1.0);
            return display ? QVariant(QString::number(100.0 * p->salient_ratio, 'f', 1) + tr("% searched"))
                           : QVariant(p->salient_ratio);
        }
        return display ? QVariant(QString::number(100.0 * s.salient_ratio, 'f', 1) + QLatin1Char('%')) : QVariant(s.salient_ratio);
    case Bits: return searched ? 2 : static_cast<int>(setting(bits_key(s)).get(s));
    case Overridden: return display ? QVariant(overridden(row) ? tr("yes") : QString()) : QVariant(overridden(row));
    case WeightError:
        if (!p)
            return {};
        return display ? QVariant(QString::number(p->weight_error, 'f', 4)) : QVariant(p->weight_error);
    case HessianError:
        if (!p || p->hessian_error < 0)
            return display ? QVariant(QStringLiteral("–")) : QVariant(-1.0);
        return display ? QVariant(QString::number(p->hessian_error, 'f', 4)) : QVariant(p->hessian_error);
    default: return {};
    }
}

bool PlanTableModel::setData(const QModelIndex& index, const QVariant& value, int role)
{
    if (!index.isValid() || role != Qt::EditRole || !model_ || !(flags(index) & Qt::ItemIsEditable))
        return false;
    bool ok = false;
    QuantPlan plan = context_.plan();
    const std::string linear = model_->linears[static_cast<std::size_t>(index.row())].name.toStdString();
    const char* key = index.column() == Ratio ? "salient_ratio" : bits_key(plan.settings_for(linear));
    double v = 0.0;
    if (index.column() == Ratio) {
        QString text = value.toString().trimmed();
        const bool percent = text.endsWith(QLatin1Char('%'));
        if (percent)
            text.chop(1);
        double ratio = text.toDouble(&ok);
        if (percent || ratio > 1.0)
            ratio /= 100.0;
        v = ratio;
    } else {
        v = value.toInt(&ok);
    }
    try {
        if (!ok)
            return false;
        setting(key).check(v);
    } catch (const Error&) {
        return false;
    }
    override_rule(plan, linear).set(key, v);
    context_.setPlan(plan);
    Q_EMIT dataChanged(this->index(index.row(), 0), this->index(index.row(), ColumnCount - 1));
    return true;
}

Qt::ItemFlags PlanTableModel::flags(const QModelIndex& index) const
{
    Qt::ItemFlags f = QAbstractTableModel::flags(index);
    if (!index.isValid() || !model_ || (index.column() != Ratio && index.column() != Bits))
        return f;
    const LayerQuantSettings s =
        context_.plan().settings_for(model_->linears[static_cast<std::size_t>(index.row())].name.toStdString());
    if (!s.skip && method_info(s.method).reads(index.column() == Ratio ? "salient_ratio" : bits_key(s)))
        f |= Qt::ItemIsEditable;
    return f;
}

QVariant PlanTableModel::headerData(int section, Qt::Orientation orientation, int role) const
{
    if (role != Qt::DisplayRole)
        return {};
    if (orientation == Qt::Vertical)
        return section + 1;
    static const char* names[] = {"Linear", "Salient", "Bits", "Override", "Rel. error", "H-weighted error"};
    return section >= 0 && section < ColumnCount ? tr(names[section]) : QVariant();
}

} // namespace pbllm
