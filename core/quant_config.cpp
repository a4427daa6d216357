#include "core/quant_config.h"

#include "core/error.h"
#include "core/quant/registry.h"
#include "core/system.h"

#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>

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

SaliencyMetric parse_metric(const std::string& s)
{
    if (s == "magnitude") return SaliencyMetric::Magnitude;
    if (s == "hessian") return SaliencyMetric::Hessian;
    if (s == "hessian-inv-diag") return SaliencyMetric::HessianInvDiag;
    throw Error("metric '" + s + "' is not one of magnitude, hessian, hessian-inv-diag");
}

Binarizer parse_binarizer(const std::string& s)
{
    if (s == "xnor") return Binarizer::Xnor;
    if (s == "xnor-code") return Binarizer::XnorCode;
    if (s == "sign") return Binarizer::Sign;
    throw Error("binarizer '" + s + "' is not one of xnor, xnor-code, sign");
}

QuantMethod parse_method(const std::string& s)
{
    if (const MethodInfo* m = find_method(s))
        return m->id;
    throw Error("method '" + s + "' is not one of " + method_names());
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

namespace {

void validate_layer(const LayerQuantSettings& s, const std::string& where)
{
    if (!(s.salient_ratio >= 0.0 && s.salient_ratio <= 1.0))
        throw Error(where + "salient ratio " + std::to_string(s.salient_ratio) + " is outside [0, 1]");
    if (!((s.salient_bits >= 2 && s.salient_bits <= 8) || s.salient_bits == 16))
        throw Error(where + "salient bits " + std::to_string(s.salient_bits) + " must be 2..8 or 16");
    if (s.bits < 2 || s.bits > 8)
        throw Error(where + "bits " + std::to_string(s.bits) + " must be 2..8");
}

} // namespace

void QuantConfig::validate() const
{
    validate_layer(layer, "");
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
    for (const PlanRule& r : rules) {
        if (!glob_match(r.pattern, linear_name))
            continue;
        if (r.salient_ratio) s.salient_ratio = *r.salient_ratio;
        if (r.salient_bits) s.salient_bits = *r.salient_bits;
        if (r.bits) s.bits = *r.bits;
        if (r.metric) s.metric = *r.metric;
        if (r.binarizer) s.binarizer = *r.binarizer;
        if (r.method) s.method = *r.method;
        if (r.skip) s.skip = *r.skip;
    }
    return s;
}

void QuantPlan::validate() const
{
    config.validate();
    // Settings a method cannot run with are refused now, not hours into a streamed run.
    bool billm = stores_block_binary(config.layer.method);
    for (const PlanRule& r : rules)
        billm |= r.method && stores_block_binary(*r.method);
    if (billm && config.act_order)
        throw Error("billm and arb do not reorder columns: act_order applies to the GPTQ solver only");
    if (billm && config.groupsize > 0)
        throw Error("billm and arb keep their parameters per block of columns: groupsize must be 0");
    if (billm && config.blocksize < 2)
        throw Error("billm and arb need blocks of at least 2 columns (blocksize " + std::to_string(config.blocksize) + ")");
    // Options only the row-column layout reads are refused for a plan whose block-binary methods
    // include another one (ARB-RC's 8-bit scales: the others store signed means).
    std::vector<QuantMethod> used{config.layer.method};
    for (const PlanRule& r : rules)
        if (r.method)
            used.push_back(*r.method);
    for (const BlockBinaryOption& o : block_binary_options())
        if (o.row_column_only && o.get(config.block_binary) != 0)
            for (QuantMethod m : used)
                if (stores_block_binary(m) && !block_layout_of(m).row_column)
                    throw Error(std::string(o.key) + " " + o.value(config.block_binary) + " applies to arb-rc only; " +
                                to_string(m) + " stores signed means");
    for (const PlanRule& r : rules) {
        if (r.pattern.empty())
            throw Error("a plan rule has an empty pattern");
        LayerQuantSettings s = config.layer;
        if (r.salient_ratio) s.salient_ratio = *r.salient_ratio;
        if (r.salient_bits) s.salient_bits = *r.salient_bits;
        if (r.bits) s.bits = *r.bits;
        validate_layer(s, "rule '" + r.pattern + "': ");
    }
}

namespace {

QJsonObject layer_json(const LayerQuantSettings& s)
{
    return QJsonObject{{"salient_ratio", s.salient_ratio},
                       {"salient_bits", s.salient_bits},
                       {"bits", s.bits},
                       {"metric", QString::fromStdString(to_string(s.metric))},
                       {"binarizer", QString::fromStdString(to_string(s.binarizer))},
                       {"method", QString::fromStdString(to_string(s.method))},
                       {"skip", s.skip}};
}

} // namespace

std::string QuantPlan::to_json() const
{
    QJsonObject root = layer_json(config.layer);
    root.insert("blocksize", config.blocksize);
    root.insert("groupsize", config.groupsize);
    root.insert("percdamp", config.percdamp);
    root.insert("act_order", config.act_order);
    root.insert("nsamples", config.nsamples);
    root.insert("seqlen", config.seqlen);
    root.insert("seed", QString::number(config.seed));
    root.insert("quantize_head", config.quantize_head);
    for (const BlockBinaryOption& o : block_binary_options()) // written only when set: older plans stay byte-identical
        if (o.get(config.block_binary) != 0)
            root.insert(o.key, QString::fromStdString(o.value(config.block_binary)));
    QJsonArray rules_json;
    for (const PlanRule& r : rules) {
        QJsonObject o{{"pattern", QString::fromStdString(r.pattern)}};
        if (r.salient_ratio) o.insert("salient_ratio", *r.salient_ratio);
        if (r.salient_bits) o.insert("salient_bits", *r.salient_bits);
        if (r.bits) o.insert("bits", *r.bits);
        if (r.metric) o.insert("metric", QString::fromStdString(to_string(*r.metric)));
        if (r.binarizer) o.insert("binarizer", QString::fromStdString(to_string(*r.binarizer)));
        if (r.method) o.insert("method", QString::fromStdString(to_string(*r.method)));
        if (r.skip) o.insert("skip", *r.skip);
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

    QuantPlan plan;
    const QJsonObject root = doc.object();
    for (auto it = root.begin(); it != root.end(); ++it) {
        const QString k = it.key();
        QuantConfig& c = plan.config;
        if (k == "salient_ratio") c.layer.salient_ratio = number(root, k);
        else if (k == "salient_bits") c.layer.salient_bits = integer(root, k);
        else if (k == "bits") c.layer.bits = integer(root, k);
        else if (k == "metric") c.layer.metric = wrap(k, [&] { return parse_metric(text(root, k)); });
        else if (k == "binarizer") c.layer.binarizer = wrap(k, [&] { return parse_binarizer(text(root, k)); });
        else if (k == "method") c.layer.method = wrap(k, [&] { return parse_method(text(root, k)); });
        else if (k == "skip") c.layer.skip = boolean(root, k);
        else if (k == "blocksize") c.blocksize = integer(root, k);
        else if (k == "groupsize") c.groupsize = integer(root, k);
        else if (k == "percdamp") c.percdamp = number(root, k);
        else if (k == "act_order") c.act_order = boolean(root, k);
        else if (k == "nsamples") c.nsamples = integer(root, k);
        else if (k == "seqlen") c.seqlen = integer(root, k);
        else if (k == "quantize_head") c.quantize_head = boolean(root, k);
        else if (const BlockBinaryOption* o = find_block_binary_option(k.toStdString()))
            wrap(k, [&] { o->set_value(c.block_binary, text(root, k)); return 0; });
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
                    else if (rk == "salient_ratio") r.salient_ratio = number(o, rk);
                    else if (rk == "salient_bits") r.salient_bits = integer(o, rk);
                    else if (rk == "bits") r.bits = integer(o, rk);
                    else if (rk == "metric") r.metric = wrap(rk, [&] { return parse_metric(text(o, rk)); });
                    else if (rk == "binarizer") r.binarizer = wrap(rk, [&] { return parse_binarizer(text(o, rk)); });
                    else if (rk == "method") r.method = wrap(rk, [&] { return parse_method(text(o, rk)); });
                    else if (rk == "skip") r.skip = boolean(o, rk);
                    else throw Error(where(rk) + " is not a rule field (pattern, salient_ratio, salient_bits, bits, "
                                                 "metric, binarizer, method, skip)");
                }
                plan.rules.push_back(r);
            }
        } else {
            throw Error(where(k) + " is unknown");
        }
    }
    try {
        plan.validate();
    } catch (const Error& e) {
        throw Error(origin + ": " + e.what());
    }
    return plan;
}

QuantPlan QuantPlan::from_file(const std::string& path) { return from_json(read_file_bytes(path), path); }

} // namespace pbllm
