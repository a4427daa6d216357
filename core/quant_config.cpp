#include "core/quant_config.h"

#include "core/error.h"
#include "core/quant/registry.h"
#include "core/quant/settings.h"
#include "core/system.h"

#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>

#include <algorithm>
#include <cmath>

namespace pbllm {

std::string to_string(SaliencyMetric m)
{
    switch (m) {
    case SaliencyMetric::Magnitude: return "magnitude";
    case SaliencyMetric::Hessian: return "hessian";
    case SaliencyMetric::HessianInvDiag: return "hessian-inv-diag";
    }
    return "?";
}

std::string to_string(Binarizer b)
{
    switch (b) {
    case Binarizer::Xnor: return "xnor";
    case Binarizer::XnorCode: return "xnor-code";
    case Binarizer::Sign: return "sign";
    }
    return "?";
}

std::string to_string(QuantMethod m) { return method_info(m).name; }

SaliencyMetric parse_metric(const std::string& s) { return static_cast<SaliencyMetric>(setting("metric").parse(s)); }

Binarizer parse_binarizer(const std::string& s) { return static_cast<Binarizer>(setting("binarizer").parse(s)); }

QuantMethod parse_method(const std::string& s)
{
    return methods()[static_cast<std::size_t>(setting("method").parse(s))].id;
}

bool glob_match(const std::string& pattern, const std::string& text)
{
    // Iterative matcher with backtracking to the last '*'.
    std::size_t p = 0, t = 0, star = std::string::npos, mark = 0;
    while (t < text.size()) {
        if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
            ++p;
            ++t;
        } else if (p < pattern.size() && pattern[p] == '*') {
            star = p++;
            mark = t;
        } else if (star != std::string::npos) {
            p = star + 1;
            t = ++mark;
        } else {
            return false;
        }
    }
    while (p < pattern.size() && pattern[p] == '*')
        ++p;
    return p == pattern.size();
}

bool PlanRule::sets(const std::string& key) const { return std::find(keys.begin(), keys.end(), key) != keys.end(); }

PlanRule& PlanRule::mark(const std::string& key)
{
    setting(key); // a programming error otherwise
    if (!sets(key))
        keys.push_back(key);
    return *this;
}

PlanRule& PlanRule::set(const std::string& key, double value)
{
    setting(key).set(values, value);
    return mark(key);
}

void PlanRule::unset(const std::string& key) { keys.erase(std::remove(keys.begin(), keys.end(), key), keys.end()); }

void PlanRule::apply(LayerQuantSettings& s) const
{
    for (const std::string& key : keys)
        setting(key).copy(values, s);
}

void QuantConfig::validate() const
{
    check_setting_ranges(layer);
    if (blocksize < 1 || blocksize > 4096)
        throw Error("blocksize " + std::to_string(blocksize) + " must be in 1..4096");
    if (groupsize < 0 || (groupsize > 0 && groupsize % blocksize != 0))
        throw Error("groupsize " + std::to_string(groupsize) + " must be 0 or a multiple of the blocksize " +
                    std::to_string(blocksize));
    if (!(percdamp > 0.0 && percdamp < 10.0))
        throw Error("percdamp " + std::to_string(percdamp) + " must be in (0, 10)");
    if (nsamples < 1)
        throw Error("nsamples must be at least 1");
    if (seqlen < 0 || seqlen == 1)
        throw Error("seqlen must be 0 (the model's context) or at least 2");
}

LayerQuantSettings QuantPlan::settings_for(const std::string& linear_name) const
{
    LayerQuantSettings s = config.layer;
    for (const PlanRule& r : rules)
        if (glob_match(r.pattern, linear_name))
            r.apply(s);
    // A strict setting its method does not read (the plan's 8-bit scales on a pb-gptq Linear of a
    // plan that runs arb-rc elsewhere) is the default for this Linear.
    return with_method(s, s.method);
}

void QuantPlan::validate() const
{
    config.validate();
    // Settings a method cannot run with are refused now, not hours into a streamed run. Each rule
    // is checked over the defaults. A strict setting a rule asks for must be read by the method
    // the rule sets, or (without one) by one of the plan's methods; plan-wide, it applies to the
    // Linears whose method reads it (settings_for).
    const std::vector<QuantMethod> used = plan_methods(*this);
    for (const PlanRule& r : rules) {
        if (r.pattern.empty())
            throw Error("a plan rule has an empty pattern");
        LayerQuantSettings s = config.layer;
        r.apply(s);
        const std::string where = "rule '" + r.pattern + "': ";
        check_setting_ranges(s, where);
        LayerQuantSettings asked; // only what the rule itself sets
        r.apply(asked);
        check_strict_settings_are_read(asked, r.sets("method") ? std::vector<QuantMethod>{s.method} : used, where);
    }
    check_strict_settings_are_read(config.layer, used);
    const bool block = std::any_of(used.begin(), used.end(), [](QuantMethod m) { return stores_block_binary(m); });
    if (block && config.act_order)
        throw Error("billm and arb do not reorder columns: act_order applies to the GPTQ solver only");
    if (block && config.groupsize > 0)
        throw Error("billm and arb keep their parameters per block of columns: groupsize must be 0");
    if (block && config.blocksize < 2)
        throw Error("billm and arb need blocks of at least 2 columns (blocksize " + std::to_string(config.blocksize) + ")");
}

namespace {

QJsonValue setting_json(const SettingInfo& info, double v)
{
    switch (info.kind) {
    case SettingKind::Real: return v;
    case SettingKind::Integer: return static_cast<int>(v);
    case SettingKind::Choice: return QString::fromStdString(info.format(v));
    case SettingKind::Switch: return v != 0.0;
    }
    return {};
}

} // namespace

std::string QuantPlan::to_json() const
{
    QJsonObject root;
    for (const SettingInfo& info : layer_settings()) {
        const double v = info.get(config.layer);
        if (!info.omit_default || v != info.default_value())
            root.insert(info.key, setting_json(info, v));
    }
    root.insert("blocksize", config.blocksize);
    root.insert("groupsize", config.groupsize);
    root.insert("percdamp", config.percdamp);
    root.insert("act_order", config.act_order);
    root.insert("nsamples", config.nsamples);
    root.insert("seqlen", config.seqlen);
    root.insert("seed", QString::number(config.seed));
    root.insert("quantize_head", config.quantize_head);
    QJsonArray rules_json;
    for (const PlanRule& r : rules) {
        QJsonObject o{{"pattern", QString::fromStdString(r.pattern)}};
        for (const std::string& key : r.keys) {
            const SettingInfo& info = setting(key);
            o.insert(info.key, setting_json(info, info.get(r.values)));
        }
        rules_json.append(o);
    }
    root.insert("rules", rules_json);
    return QJsonDocument(root).toJson(QJsonDocument::Indented).toStdString();
}

QuantPlan QuantPlan::from_json(const std::string& json, const std::string& origin)
{
    QJsonParseError err{};
    const QJsonDocument doc = QJsonDocument::fromJson(QByteArray::fromStdString(json), &err);
    if (err.error != QJsonParseError::NoError || !doc.isObject())
        throw Error(origin + ": not a JSON object (" + err.errorString().toStdString() + ")");
    auto where = [&](const QString& key) { return origin + ": key '" + key.toStdString() + "'"; };
    auto number = [&](const QJsonObject& o, const QString& key) {
        if (!o.value(key).isDouble())
            throw Error(where(key) + " must be a number");
        return o.value(key).toDouble();
    };
    auto integer = [&](const QJsonObject& o, const QString& key) {
        const double v = number(o, key);
        if (v != std::floor(v) || std::abs(v) > 1e9)
            throw Error(where(key) + " must be an integer");
        return static_cast<int>(v);
    };
    auto text = [&](const QJsonObject& o, const QString& key) {
        if (!o.value(key).isString())
            throw Error(where(key) + " must be a string");
        return o.value(key).toString().toStdString();
    };
    auto boolean = [&](const QJsonObject& o, const QString& key) {
        if (!o.value(key).isBool())
            throw Error(where(key) + " must be true or false");
        return o.value(key).toBool();
    };
    auto wrap = [&](const QString& key, auto parse) {
        try {
            return parse();
        } catch (const Error& e) {
            throw Error(where(key) + ": " + e.what());
        }
    };

    // A setting's JSON value: a number for numbers, a string for choices, a bool for switches.
    auto setting_value = [&](const SettingInfo& info, const QJsonObject& o, const QString& key) {
        switch (info.kind) {
        case SettingKind::Real: return number(o, key); // ranges: validate() names the rule
        case SettingKind::Integer: return static_cast<double>(integer(o, key));
        case SettingKind::Choice: return wrap(key, [&] { return info.parse(text(o, key)); });
        case SettingKind::Switch: return boolean(o, key) ? 1.0 : 0.0;
        }
        return 0.0;
    };
    auto find_key = [](const QString& key) -> const SettingInfo* {
        const SettingInfo* info = find_setting(key.toStdString());
        return info && key.toStdString() == info->key ? info : nullptr; // keys, not flags
    };
    auto rule_fields = [] {
        std::string fields = "pattern";
        for (const SettingInfo& info : layer_settings())
            fields += std::string(", ") + info.key;
        return fields;
    };

    QuantPlan plan;
    const QJsonObject root = doc.object();
    for (auto it = root.begin(); it != root.end(); ++it) {
        const QString k = it.key();
        QuantConfig& c = plan.config;
        if (const SettingInfo* info = find_key(k)) info->set(c.layer, setting_value(*info, root, k));
        else if (k == "blocksize") c.blocksize = integer(root, k);
        else if (k == "groupsize") c.groupsize = integer(root, k);
        else if (k == "percdamp") c.percdamp = number(root, k);
        else if (k == "act_order") c.act_order = boolean(root, k);
        else if (k == "nsamples") c.nsamples = integer(root, k);
        else if (k == "seqlen") c.seqlen = integer(root, k);
        else if (k == "quantize_head") c.quantize_head = boolean(root, k);
        else if (k == "seed") {
            bool ok = it.value().isString() || it.value().isDouble();
            const QString s = it.value().isString() ? it.value().toString() : QString::number(it.value().toDouble(), 'f', 0);
            c.seed = s.toULongLong(&ok);
            if (!ok)
                throw Error(where(k) + " must be a non-negative integer");
        } else if (k == "rules") {
            if (!it.value().isArray())
                throw Error(where(k) + " must be an array");
            for (const QJsonValue& v : it.value().toArray()) {
                if (!v.isObject())
                    throw Error(where(k) + " must hold objects");
                const QJsonObject o = v.toObject();
                PlanRule r;
                for (auto f = o.begin(); f != o.end(); ++f) {
                    const QString rk = f.key();
                    if (rk == "pattern") r.pattern = text(o, rk);
                    else if (const SettingInfo* info = find_key(rk)) r.set(info->key, setting_value(*info, o, rk));
                    else throw Error(where(rk) + " is not a rule field (" + rule_fields() + ")");
                }
                plan.rules.push_back(r);
            }
        } else {
            throw Error(where(k) + " is unknown");
        }
    }
    // Before the check, a plan-wide scale_format was stored with PB-LLM's methods (and ignored):
    // such plans (files' headers among them) read as they ran. With a block method it is refused.
    const std::vector<QuantMethod> used = plan_methods(plan);
    if (std::none_of(used.begin(), used.end(), [](QuantMethod m) { return stores_block_binary(m); }))
        drop_unread_strict_settings(plan);
    try {
        plan.validate();
    } catch (const Error& e) {
        throw Error(origin + ": " + e.what());
    }
    return plan;
}

QuantPlan QuantPlan::from_file(const std::string& path) { return from_json(read_file_bytes(path), path); }

} // namespace pbllm
