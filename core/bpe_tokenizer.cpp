#include "core/bpe_tokenizer.h"

#include "core/error.h"
#include "core/system.h"
#include "core/tokenizer_impl.h"

#include <QDir>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QRegularExpression>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <mutex>
#include <queue>
#include <unordered_map>

namespace pbllm {
namespace {

// GPT-2's pre-tokenizer pattern (ByteLevel with use_regex): contractions, letters, numbers, other
// symbols, each optionally led by one space; whitespace runs leave their last space to the next word.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Ids beyond this are refused as implausible (the largest vocabularies in use are ~260k).
constexpr int kMaxVocabulary = 1 << 20;

// Header of the embedded form (model_bytes): the BOS/EOS that came from files beside tokenizer.json.
constexpr std::string_view kEmbeddedHeader = "PBLLM-BPE 1 ";

std::string quoted(const QString& s) { return "\"" + s.toStdString() + "\""; }

QJsonDocument parse_json(std::string_view text, const std::string& where)
{
    QJsonParseError err{};
    const QJsonDocument doc =
        QJsonDocument::fromJson(QByteArray(text.data(), static_cast<qsizetype>(text.size())), &err);
    if (err.error != QJsonParseError::NoError)
        throw Error(where + ": not valid JSON at byte " + std::to_string(err.offset) + ": " +
                    err.errorString().toStdString());
    return doc;
}

QRegularExpression compile(const QString& pattern, const std::string& where)
{
    // Unicode semantics for \s, \w and \d, as the tokenizers library's Oniguruma patterns have.
    QRegularExpression re(pattern, QRegularExpression::UseUnicodePropertiesOption);
    if (!re.isValid())
        throw Error(where + ": regular expression " + quoted(pattern) + " does not compile: " +
                    re.errorString().toStdString());
    re.optimize();
    return re;
}

void append_utf8(std::string& out, char32_t cp)
{
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the other 68 bytes
/// for U+0100.. in order, so that every byte string is a string of visible characters.
struct ByteLevelMap {
    std::array<std::string, 256> utf8; ///< each byte's character, as UTF-8
    std::array<int, 324> byte_of{};    ///< character -> byte, -1 for characters that stand for none
    ByteLevelMap()
    {
        byte_of.fill(-1);
        int next = 256;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
            const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(next++);
            append_utf8(utf8[b], cp);
            byte_of[cp] = b;
        }
    }
};

const ByteLevelMap& byte_map()
{
    static const ByteLevelMap map;
    return map;
}

/// The bytes a byte-level vocabulary entry stands for; characters outside the map are kept as text.
std::string byte_level_decode(const QString& token)
{
    std::string out;
    for (const char32_t cp : token.toUcs4()) {
        if (cp < byte_map().byte_of.size() && byte_map().byte_of[cp] >= 0)
            out += static_cast<char>(byte_map().byte_of[cp]);
        else
            append_utf8(out, cp);
    }
    return out;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer

enum class SplitBehavior { Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous };

struct BpePreTokenizer::Steps {
    struct Step {
        QRegularExpression pattern;  ///< what to split on; empty pattern: no split
        SplitBehavior behavior = SplitBehavior::Isolated;
        bool invert = false;
        bool add_prefix_space = false; ///< ByteLevel: a space before each piece that lacks one
    };
    std::vector<Step> steps;
    bool byte_level = false;

    void add(const QJsonValue& spec, const std::string& where, const std::string& key)
    {
        if (spec.isNull() || spec.isUndefined())
            return;
        if (!spec.isObject())
            throw Error(where + ": " + key + " is not an object");
        const QJsonObject o = spec.toObject();
        const QString type = o.value("type").toString();
        if (type == "Sequence") {
            const QJsonArray list = o.value("pretokenizers").toArray();
            for (qsizetype i = 0; i < list.size(); ++i)
                add(list[i], where, key + ".pretokenizers[" + std::to_string(i) + "]");
        } else if (type == "ByteLevel") {
            byte_level = true;
            Step s;
            s.add_prefix_space = o.value("add_prefix_space").toBool(false);
            if (o.value("use_regex").toBool(true))
                s.pattern = compile(kGpt2Pattern, where);
            steps.push_back(std::move(s));
        } else if (type == "Digits") {
            Step s;
            s.pattern = compile(o.value("individual_digits").toBool(false) ? R"(\p{N})" : R"(\p{N}+)", where);
            steps.push_back(std::move(s));
        } else if (type == "Split") {
            const QJsonObject pat = o.value("pattern").toObject();
            Step s;
            if (pat.contains("Regex"))
                s.pattern = compile(pat.value("Regex").toString(), where + ": " + key + ".pattern.Regex");
            else if (pat.contains("String"))
                s.pattern = compile(QRegularExpression::escape(pat.value("String").toString()), where);
            else
                throw Error(where + ": " + key + ".pattern has neither \"Regex\" nor \"String\"");
            const QString b = o.value("behavior").toString();
            if (b == "Isolated") s.behavior = SplitBehavior::Isolated;
            else if (b == "Removed") s.behavior = SplitBehavior::Removed;
            else if (b == "MergedWithPrevious") s.behavior = SplitBehavior::MergedWithPrevious;
            else if (b == "MergedWithNext") s.behavior = SplitBehavior::MergedWithNext;
            else if (b == "Contiguous") s.behavior = SplitBehavior::Contiguous;
            else throw Error(where + ": " + key + ".behavior " + quoted(b) + " is not one of Isolated, Removed, "
                             "MergedWithPrevious, MergedWithNext, Contiguous");
            s.invert = o.value("invert").toBool(false);
            steps.push_back(std::move(s));
        } else {
            throw Error(where + ": " + key + ".type " + quoted(type) +
                        " is not supported (Sequence, Split, ByteLevel and Digits are)");
        }
    }

    /// One step over one piece: appends the resulting pieces to `out`.
    static void apply(const Step& step, const QString& piece, std::vector<QString>& out)
    {
        QString text = piece;
        if (step.add_prefix_space && !text.startsWith(QLatin1Char(' ')))
            text.prepend(QLatin1Char(' '));
        if (step.pattern.pattern().isEmpty()) {
            out.push_back(std::move(text));
            return;
        }
        // Segments [begin, end) of the text, each a match of the pattern or the gap between two.
        struct Segment { qsizetype begin, end; bool match; };
        std::vector<Segment> segments;
        qsizetype at = 0;
        QRegularExpressionMatchIterator it = step.pattern.globalMatch(text);
        while (it.hasNext()) {
            const QRegularExpressionMatch m = it.next();
            const qsizetype b = m.capturedStart(0), e = m.capturedEnd(0);
            if (e == b)
                continue; // an empty match splits nothing
            if (b > at)
                segments.push_back({at, b, step.invert});
            segments.push_back({b, e, !step.invert});
            at = e;
        }
        if (at < text.size())
            segments.push_back({at, text.size(), step.invert});

        auto emit = [&](qsizetype b, qsizetype e) {
            if (e > b)
                out.push_back(text.mid(b, e - b));
        };
        switch (step.behavior) {
        case SplitBehavior::Isolated:
            for (const Segment& s : segments)
                emit(s.begin, s.end);
            break;
        case SplitBehavior::Removed:
            for (const Segment& s : segments)
                if (!s.match)
                    emit(s.begin, s.end);
            break;
        case SplitBehavior::MergedWithPrevious: { // a match ends the piece before it
            qsizetype start = 0;
            for (const Segment& s : segments)
                if (s.match) {
                    emit(start, s.end);
                    start = s.end;
                }
            emit(start, text.size());
            break;
        }
        case SplitBehavior::MergedWithNext: { // a match starts a new piece
            qsizetype start = 0;
            for (const Segment& s : segments)
                if (s.match) {
                    emit(start, s.begin);
                    start = s.begin;
                }
            emit(start, text.size());
            break;
        }
        case SplitBehavior::Contiguous: { // adjacent matches form one piece
            for (std::size_t i = 0; i < segments.size();) {
                std::size_t j = i + 1;
                if (segments[i].match)
                    while (j < segments.size() && segments[j].match)
                        ++j;
                emit(segments[i].begin, segments[j - 1].end);
                i = j;
            }
            break;
        }
        }
    }

    std::vector<QString> run(const QString& text) const
    {
        std::vector<QString> pieces{text};
        std::vector<QString> next;
        for (const Step& step : steps) {
            next.clear();
            for (const QString& p : pieces)
                apply(step, p, next);
            pieces.swap(next);
        }
        return pieces;
    }
};

BpePreTokenizer::BpePreTokenizer(std::unique_ptr<Steps> steps) : steps_(std::move(steps)) {}
BpePreTokenizer::~BpePreTokenizer() = default;
BpePreTokenizer::BpePreTokenizer(BpePreTokenizer&&) noexcept = default;
BpePreTokenizer& BpePreTokenizer::operator=(BpePreTokenizer&&) noexcept = default;

BpePreTokenizer BpePreTokenizer::from_json(std::string_view json, const std::string& where)
{
    // Wrapped so that "null" and any value parse as a document.
    const QJsonDocument doc = parse_json("[" + std::string(json) + "]", where);
    auto steps = std::make_unique<Steps>();
    steps->add(doc.array().at(0), where, "pre_tokenizer");
    return BpePreTokenizer(std::move(steps));
}

std::vector<std::string> BpePreTokenizer::split(std::string_view text) const
{
    std::vector<std::string> out;
    for (const QString& p : steps_->run(QString::fromUtf8(text.data(), static_cast<qsizetype>(text.size()))))
        out.push_back(p.toStdString());
    return out;
}

bool BpePreTokenizer::byte_level() const { return steps_->byte_level; }

// ---------------------------------------------------------------------------------------------
// Normalizer

namespace {

struct Normalizer {
    enum class Kind { Form, Lowercase, Replace, Prepend };
    struct Step {
        Kind kind;
        QString::NormalizationForm form = QString::NormalizationForm_C;
        QRegularExpression pattern;
        QString content;
    };
    std::vector<Step> steps;

    void add(const QJsonValue& spec, const std::string& where, const std::string& key)
    {
        if (spec.isNull() || spec.isUndefined())
            return;
        const QJsonObject o = spec.toObject();
        const QString type = o.value("type").toString();
        if (type == "Sequence") {
            const QJsonArray list = o.value("normalizers").toArray();
            for (qsizetype i = 0; i < list.size(); ++i)
                add(list[i], where, key + ".normalizers[" + std::to_string(i) + "]");
        } else if (type == "NFC") {
            steps.push_back({Kind::Form, QString::NormalizationForm_C, {}, {}});
        } else if (type == "NFD") {
            steps.push_back({Kind::Form, QString::NormalizationForm_D, {}, {}});
        } else if (type == "NFKC") {
            steps.push_back({Kind::Form, QString::NormalizationForm_KC, {}, {}});
        } else if (type == "NFKD") {
            steps.push_back({Kind::Form, QString::NormalizationForm_KD, {}, {}});
        } else if (type == "Lowercase") {
            steps.push_back({Kind::Lowercase, {}, {}, {}});
        } else if (type == "Prepend") {
            steps.push_back({Kind::Prepend, {}, {}, o.value("prepend").toString()});
        } else if (type == "Replace") {
            const QJsonObject pat = o.value("pattern").toObject();
            QString regex = pat.contains("Regex") ? pat.value("Regex").toString()
                                                  : QRegularExpression::escape(pat.value("String").toString());
            if (regex.isEmpty())
                throw Error(where + ": " + key + ".pattern is empty");
            steps.push_back({Kind::Replace, {}, compile(regex, where), o.value("content").toString()});
        } else {
            throw Error(where + ": " + key + ".type " + quoted(type) +
                        " is not supported (NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace and Sequence are)");
        }
    }

    void run(QString& text) const
    {
        for (const Step& s : steps) {
            switch (s.kind) {
            case Kind::Form: text = text.normalized(s.form); break;
            case Kind::Lowercase: text = text.toLower(); break;
            case Kind::Prepend: if (!text.isEmpty()) text.prepend(s.content); break;
            case Kind::Replace: { // the content is literal text (QString::replace would read \1 as a group)
                QString out;
                qsizetype at = 0;
                QRegularExpressionMatchIterator it = s.pattern.globalMatch(text);
                while (it.hasNext()) {
                    const QRegularExpressionMatch m = it.next();
                    out += QStringView(text).mid(at, m.capturedStart(0) - at);
                    out += s.content;
                    at = m.capturedEnd(0);
                }
                out += QStringView(text).mid(at);
                text = out;
                break;
            }
            }
        }
    }
};

struct AddedToken {
    int id = -1;
    std::string content;
    bool special = false, normalized = false, lstrip = false, rstrip = false, single_word = false;
};

bool is_space_byte(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
bool is_word_byte(char c)
{
    const auto u = static_cast<unsigned char>(c);
    return std::isalnum(u) || c == '_' || u >= 0x80;
}

/// Finds added tokens in text, leftmost first and the longest at a position (the tokenizers
/// library's matching), honouring lstrip/rstrip (the match takes the whitespace beside it) and
/// single_word (not inside a word).
class AddedTokenMatcher {
public:
    void add(const AddedToken* token)
    {
        if (!token->content.empty())
            by_first_byte_[static_cast<unsigned char>(token->content[0])].push_back(token);
    }
    void finish()
    {
        for (auto& list : by_first_byte_)
            std::stable_sort(list.begin(), list.end(), [](const AddedToken* a, const AddedToken* b) {
                return a->content.size() > b->content.size();
            });
    }
    bool empty() const
    {
        return std::all_of(by_first_byte_.begin(), by_first_byte_.end(), [](const auto& l) { return l.empty(); });
    }

    struct Match { std::size_t begin, end; const AddedToken* token; };
    /// Splits text into runs of plain text (token == nullptr) and added tokens.
    std::vector<Match> split(std::string_view text) const
    {
        std::vector<Match> out;
        std::size_t plain = 0;
        for (std::size_t at = 0; at < text.size();) {
            const AddedToken* found = nullptr;
            for (const AddedToken* t : by_first_byte_[static_cast<unsigned char>(text[at])]) {
                if (text.compare(at, t->content.size(), t->content) != 0)
                    continue;
                const std::size_t end = at + t->content.size();
                if (t->single_word && ((at > 0 && is_word_byte(text[at - 1])) ||
                                       (end < text.size() && is_word_byte(text[end]))))
                    continue;
                found = t;
                break;
            }
            if (!found) {
                ++at;
                continue;
            }
            std::size_t begin = at, end = at + found->content.size();
            if (found->lstrip)
                while (begin > plain && is_space_byte(text[begin - 1]))
                    --begin;
            if (found->rstrip)
                while (end < text.size() && is_space_byte(text[end]))
                    ++end;
            if (begin > plain)
                out.push_back({plain, begin, nullptr});
            out.push_back({begin, end, found});
            plain = at = end;
        }
        if (plain < text.size())
            out.push_back({plain, text.size(), nullptr});
        return out;
    }

private:
    std::array<std::vector<const AddedToken*>, 256> by_first_byte_;
};

int json_int(const QJsonValue& v, const std::string& where, const std::string& key)
{
    if (!v.isDouble() || v.toDouble() != static_cast<double>(v.toInt()) || v.toInt() < 0)
        throw Error(where + ": " + key + " is not a non-negative integer");
    return v.toInt();
}

class BpeTokenizer final : public Tokenizer::Impl {
public:
    BpeTokenizer(const std::string& json, const std::string& where)
    {
        const QJsonDocument doc = parse_json(json, where);
        if (!doc.isObject())
            throw Error(where + ": not a tokenizer.json (the top level is not an object)");
        const QJsonObject root = doc.object();
        if (!root.contains("model"))
            throw Error(where + ": not a tokenizer.json (no \"model\" key)");
        load_model(root.value("model").toObject(), where);
        load_added_tokens(root.value("added_tokens"), where);
        normalizer_.add(root.value("normalizer"), where, "normalizer");
        auto steps = std::make_unique<BpePreTokenizer::Steps>();
        steps->add(root.value("pre_tokenizer"), where, "pre_tokenizer");
        if (!steps->byte_level)
            throw Error(where + ": pre_tokenizer has no ByteLevel step: only byte-level BPE tokenizer.json files are "
                        "supported (SentencePiece-style ones come with a tokenizer.model: use that)");
        pre_tokenizer_ = std::move(steps);
        bos = template_bos(root.value("post_processor"), where);

        token_bytes.assign(static_cast<std::size_t>(vocab), std::string());
        pieces_.assign(static_cast<std::size_t>(vocab), std::string());
        for (const auto& [text, id] : vocab_ids_) {
            pieces_[id] = text;
            token_bytes[id] = byte_level_decode(QString::fromStdString(text));
        }
        for (const AddedToken& t : added_) {
            pieces_[t.id] = t.content;
            token_bytes[t.id] = t.special ? std::string() : t.content;
        }
        kind = "bpe";
        strips_leading_space = false;
    }

    /// BOS and EOS named in tokenizer_config.json / generation_config.json beside the file.
    void read_side_files(const std::string& folder)
    {
        const QDir dir(QString::fromStdString(folder));
        const QString config_path = dir.filePath("tokenizer_config.json");
        if (QFileInfo(config_path).isFile()) {
            const std::string where = config_path.toStdString();
            const QJsonObject config = parse_json(read_file_bytes(where), where).object();
            auto token_id = [&](const char* key) {
                const QJsonValue v = config.value(key);
                const QString name = v.isObject() ? v.toObject().value("content").toString() : v.toString();
                if (name.isEmpty())
                    return -1;
                const int id = id_of(name.toStdString());
                if (id < 0)
                    throw Error(where + ": " + key + " " + quoted(name) + " is not a token of the vocabulary");
                return id;
            };
            if (config.value("add_bos_token").toBool(false) && bos < 0)
                bos = token_id("bos_token");
            eos = token_id("eos_token");
        }
        // generation_config.json's eos_token_id: one id or every stop token (Llama 3.1 Instruct lists
        // three); the first is EOS when tokenizer_config.json named none.
        const QString generation_path = dir.filePath("generation_config.json");
        std::vector<int> listed;
        if (QFileInfo(generation_path).isFile()) {
            const std::string where = generation_path.toStdString();
            const QJsonObject config = parse_json(read_file_bytes(where), where).object();
            const QJsonValue v = config.value("eos_token_id");
            const QJsonArray ids = v.isArray() ? v.toArray() : (v.isUndefined() || v.isNull()) ? QJsonArray{} : QJsonArray{v};
            for (const QJsonValue& id : ids) {
                const int stop = json_int(id, where, "eos_token_id");
                if (stop >= vocab)
                    throw Error(where + ": eos_token_id " + std::to_string(stop) + " is outside the vocabulary of " +
                                std::to_string(vocab));
                listed.push_back(stop);
            }
        }
        if (eos < 0 && !listed.empty())
            eos = listed.front();
        set_stops(eos, listed);
    }

    /// stops = eos (when any), then `more` without repeats.
    void set_stops(int eos_id, const std::vector<int>& more)
    {
        stops.clear();
        if (eos_id >= 0)
            stops.push_back(eos_id);
        for (int id : more)
            if (std::find(stops.begin(), stops.end(), id) == stops.end())
                stops.push_back(id);
    }

    std::vector<int> encode(std::string_view text) const override
    {
        std::vector<int> ids;
        ids.reserve(text.size() / 3 + 8);
        for (const auto& m : raw_matcher_.split(text)) {
            if (m.token) {
                ids.push_back(m.token->id);
                continue;
            }
            QString segment = QString::fromUtf8(text.data() + m.begin, static_cast<qsizetype>(m.end - m.begin));
            normalizer_.run(segment);
            if (normalized_matcher_.empty()) {
                encode_normalized(segment, ids);
                continue;
            }
            const std::string normalized = segment.toStdString();
            for (const auto& n : normalized_matcher_.split(normalized)) {
                if (n.token)
                    ids.push_back(n.token->id);
                else
                    encode_normalized(QString::fromUtf8(normalized.data() + n.begin,
                                                        static_cast<qsizetype>(n.end - n.begin)), ids);
            }
        }
        return ids;
    }

    std::string decode(const std::vector<int>& ids) const override
    {
        std::string out;
        for (int id : ids)
            out += token_bytes[static_cast<std::size_t>(id)];
        return out;
    }

    std::string piece(int id) const override { return pieces_[static_cast<std::size_t>(id)]; }
    float score(int id) const override
    {
        // The merge rank that made the token (lower merges first); single bytes and added tokens: 0.
        const auto it = rank_of_token_.find(id);
        return it == rank_of_token_.end() ? 0.0f : static_cast<float>(it->second);
    }

private:
    void load_model(const QJsonObject& model, const std::string& where)
    {
        const QString type = model.value("type").toString("BPE"); // old files omit the type
        if (type != "BPE")
            throw Error(where + ": model.type " + quoted(type) + " is not supported (only BPE is)");
        if (model.value("byte_fallback").toBool(false))
            throw Error(where + ": model.byte_fallback is set: a SentencePiece-style BPE; load its tokenizer.model "
                        "instead");
        if (!model.value("continuing_subword_prefix").toString().isEmpty() ||
            !model.value("end_of_word_suffix").toString().isEmpty())
            throw Error(where + ": model.continuing_subword_prefix / end_of_word_suffix are not supported");
        if (model.value("dropout").toDouble(0.0) > 0.0)
            throw Error(where + ": model.dropout is set: BPE dropout is for training, not supported here");
        ignore_merges_ = model.value("ignore_merges").toBool(false);

        const QJsonValue vocab_value = model.value("vocab");
        if (!vocab_value.isObject() || vocab_value.toObject().isEmpty())
            throw Error(where + ": model.vocab is missing or empty");
        const QJsonObject v = vocab_value.toObject();
        vocab_ids_.reserve(static_cast<std::size_t>(v.size()));
        for (auto it = v.begin(); it != v.end(); ++it) {
            const int id = json_int(it.value(), where, "model.vocab[" + quoted(it.key()) + "]");
            if (id >= kMaxVocabulary)
                throw Error(where + ": model.vocab[" + quoted(it.key()) + "] = " + std::to_string(id) +
                            " is implausibly large");
            vocab_ids_.emplace(it.key().toStdString(), id);
            vocab = std::max(vocab, id + 1);
        }
        // Bytes may lack a token: those valid UTF-8 never holds (0xC0, 0xC1, 0xF5..0xFF: GPT-NeoX) and
        // control characters (SmolLM). A vocabulary without the printable ASCII ones is not byte-level.
        for (int b = 0; b < 256; ++b) {
            const auto it = vocab_ids_.find(byte_map().utf8[b]);
            byte_ids_[b] = it == vocab_ids_.end() ? -1 : it->second;
            if (b >= 33 && b <= 126 && byte_ids_[b] < 0)
                throw Error(where + ": model.vocab lacks the token for byte " + std::to_string(b) + " (" +
                            quoted(QString::fromStdString(byte_map().utf8[b])) + "): not a byte-level BPE vocabulary");
        }
        const QString unk = model.value("unk_token").toString();
        unk_id_ = unk.isEmpty() ? -1 : id_of(unk.toStdString());

        const QJsonArray merges = model.value("merges").toArray();
        merges_.reserve(static_cast<std::size_t>(merges.size()));
        for (qsizetype rank = 0; rank < merges.size(); ++rank) {
            const std::string key = "model.merges[" + std::to_string(rank) + "]";
            QString left, right;
            if (merges[rank].isArray()) { // newer serialisation: ["a", "b"]
                const QJsonArray pair = merges[rank].toArray();
                if (pair.size() != 2)
                    throw Error(where + ": " + key + " is not a pair of tokens");
                left = pair[0].toString();
                right = pair[1].toString();
            } else { // "a b"
                const QString s = merges[rank].toString();
                const qsizetype space = s.indexOf(QLatin1Char(' '), 1);
                if (space < 0)
                    throw Error(where + ": " + key + " " + quoted(s) + " is not two tokens separated by a space");
                left = s.left(space);
                right = s.mid(space + 1);
            }
            const int a = id_of(left.toStdString()), b = id_of(right.toStdString());
            if (a < 0 || b < 0)
                throw Error(where + ": " + key + " " + quoted(left + " " + right) +
                            " names a token that is not in model.vocab");
            const int merged = id_of((left + right).toStdString());
            if (merged < 0)
                continue; // it could never make a token (GPT-2's own file has one: "ĠCla ude")
            merges_.emplace(pair_key(a, b), Merge{static_cast<int>(rank), merged});
            rank_of_token_.emplace(merged, static_cast<int>(rank));
        }
    }

    void load_added_tokens(const QJsonValue& value, const std::string& where)
    {
        const QJsonArray list = value.toArray();
        added_.reserve(static_cast<std::size_t>(list.size()));
        for (qsizetype i = 0; i < list.size(); ++i) {
            const std::string key = "added_tokens[" + std::to_string(i) + "]";
            const QJsonObject o = list[i].toObject();
            AddedToken t;
            t.id = json_int(o.value("id"), where, key + ".id");
            if (t.id >= kMaxVocabulary)
                throw Error(where + ": " + key + ".id " + std::to_string(t.id) + " is implausibly large");
            t.content = o.value("content").toString().toStdString();
            if (t.content.empty())
                throw Error(where + ": " + key + ".content is missing or empty");
            t.special = o.value("special").toBool(false);
            t.normalized = o.value("normalized").toBool(!t.special);
            t.lstrip = o.value("lstrip").toBool(false);
            t.rstrip = o.value("rstrip").toBool(false);
            t.single_word = o.value("single_word").toBool(false);
            vocab = std::max(vocab, t.id + 1);
            added_.push_back(std::move(t));
        }
        for (const AddedToken& t : added_) {
            added_ids_.emplace(t.content, t.id);
            (t.normalized ? normalized_matcher_ : raw_matcher_).add(&t);
        }
        raw_matcher_.finish();
        normalized_matcher_.finish();
    }

    /// The token TemplateProcessing puts before the text ("single": [{SpecialToken}, {Sequence A}]).
    int template_bos(const QJsonValue& spec, const std::string& where) const
    {
        const QJsonObject o = spec.toObject();
        const QString type = o.value("type").toString();
        if (type == "Sequence") {
            for (const QJsonValue& p : o.value("processors").toArray())
                if (const int id = template_bos(p, where); id >= 0)
                    return id;
            return -1;
        }
        if (type != "TemplateProcessing")
            return -1;
        const QJsonArray single = o.value("single").toArray();
        if (single.isEmpty() || !single[0].toObject().contains("SpecialToken"))
            return -1;
        const QString name = single[0].toObject().value("SpecialToken").toObject().value("id").toString();
        const QJsonArray ids = o.value("special_tokens").toObject().value(name).toObject().value("ids").toArray();
        if (ids.size() != 1)
            throw Error(where + ": post_processor.special_tokens[" + quoted(name) + "].ids is not one token id");
        const int id = json_int(ids[0], where, "post_processor.special_tokens[" + quoted(name) + "].ids[0]");
        if (id >= vocab)
            throw Error(where + ": post_processor.special_tokens[" + quoted(name) + "] id " + std::to_string(id) +
                        " is outside the vocabulary of " + std::to_string(vocab));
        return id;
    }

    int id_of(const std::string& token) const
    {
        if (const auto it = added_ids_.find(token); it != added_ids_.end())
            return it->second;
        const auto it = vocab_ids_.find(token);
        return it == vocab_ids_.end() ? -1 : it->second;
    }

    static std::uint64_t pair_key(int a, int b)
    {
        return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
    }

    void encode_normalized(const QString& segment, std::vector<int>& ids) const
    {
        for (const QString& piece : pre_tokenizer_->run(segment))
            encode_word(piece.toStdString(), ids);
    }

    /// BPE within one piece: its bytes as tokens, then the lowest-ranked adjacent pair merged (the
    /// leftmost among equals) until no pair has a merge.
    void encode_word(const std::string& word, std::vector<int>& ids) const
    {
        {
            std::lock_guard<std::mutex> lock(cache_mutex_);
            if (const auto it = cache_.find(word); it != cache_.end()) {
                ids.insert(ids.end(), it->second.begin(), it->second.end());
                return;
            }
        }
        std::vector<int> result;
        if (ignore_merges_) {
            std::string mapped;
            for (const char c : word)
                mapped += byte_map().utf8[static_cast<unsigned char>(c)];
            if (const auto it = vocab_ids_.find(mapped); it != vocab_ids_.end())
                result.push_back(it->second);
        }
        if (result.empty())
            result = merge(word);
        ids.insert(ids.end(), result.begin(), result.end());
        std::lock_guard<std::mutex> lock(cache_mutex_);
        if (cache_.size() >= kCacheEntries)
            cache_.clear();
        cache_.emplace(word, std::move(result));
    }

    std::vector<int> merge(const std::string& word) const
    {
        // A byte without a token becomes unk_token, or is dropped (as the tokenizers library does).
        std::vector<int> token;
        token.reserve(word.size());
        for (const char c : word) {
            const int id = byte_ids_[static_cast<unsigned char>(c)];
            if (id >= 0 || unk_id_ >= 0)
                token.push_back(id >= 0 ? id : unk_id_);
        }
        const int n = static_cast<int>(token.size());
        std::vector<int> prev(token.size()), next(token.size());
        std::vector<char> alive(token.size(), 1);
        for (int i = 0; i < n; ++i) {
            prev[i] = i - 1;
            next[i] = i + 1 < n ? i + 1 : -1;
        }
        struct Candidate { int rank, left, merged, right_token; };
        auto later = [](const Candidate& a, const Candidate& b) {
            return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
        };
        std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
        auto consider = [&](int left) {
            if (left < 0 || next[left] < 0)
                return;
            const auto it = merges_.find(pair_key(token[left], token[next[left]]));
            if (it != merges_.end())
                queue.push({it->second.rank, left, it->second.merged, token[next[left]]});
        };
        for (int i = 0; i + 1 < n; ++i)
            consider(i);
        while (!queue.empty()) {
            const Candidate c = queue.top();
            queue.pop();
            // Stale when either side has changed since the candidate was queued.
            if (!alive[c.left] || next[c.left] < 0 || token[next[c.left]] != c.right_token)
                continue;
            const auto it = merges_.find(pair_key(token[c.left], c.right_token));
            if (it == merges_.end() || it->second.merged != c.merged)
                continue;
            const int right = next[c.left];
            token[c.left] = c.merged;
            alive[right] = 0;
            next[c.left] = next[right];
            if (next[right] >= 0)
                prev[next[right]] = c.left;
            consider(prev[c.left]);
            consider(c.left);
        }
        std::vector<int> out;
        for (int i = n > 0 ? 0 : -1; i >= 0; i = next[i])
            out.push_back(token[i]);
        return out;
    }

    struct Merge { int rank, merged; };
    static constexpr std::size_t kCacheEntries = 1 << 16;

    std::unordered_map<std::string, int> vocab_ids_, added_ids_;
    std::unordered_map<std::uint64_t, Merge> merges_;
    std::unordered_map<int, int> rank_of_token_;
    std::array<int, 256> byte_ids_{}; ///< each byte's token; -1 when the vocabulary has none
    int unk_id_ = -1;
    std::vector<AddedToken> added_; // the matchers point into it: never resized after loading
    AddedTokenMatcher raw_matcher_, normalized_matcher_;
    Normalizer normalizer_;
    std::unique_ptr<BpePreTokenizer::Steps> pre_tokenizer_;
    std::vector<std::string> pieces_;
    bool ignore_merges_ = false;
    mutable std::mutex cache_mutex_;
    mutable std::unordered_map<std::string, std::vector<int>> cache_;
};

} // namespace

std::shared_ptr<const Tokenizer::Impl> make_bpe_tokenizer(std::string bytes, const std::string& origin,
                                                         const std::string& folder)
{
    // The embedded form: "PBLLM-BPE 1 bos=N eos=M[ stops=A,B,...]\n" then the tokenizer.json text.
    int bos = -1, eos = -1;
    std::vector<int> stops;
    bool embedded = false;
    std::string_view json = bytes;
    if (json.substr(0, kEmbeddedHeader.size()) == kEmbeddedHeader) {
        const std::size_t eol = json.find('\n');
        std::string_view header = json.substr(kEmbeddedHeader.size(), eol == std::string_view::npos ? 0 : eol - kEmbeddedHeader.size());
        auto number = [&](int& value) {
            const auto [end, ec] = std::from_chars(header.data(), header.data() + header.size(), value);
            if (ec != std::errc())
                return false;
            header.remove_prefix(static_cast<std::size_t>(end - header.data()));
            return true;
        };
        auto literal = [&](std::string_view text) {
            if (header.substr(0, text.size()) != text)
                return false;
            header.remove_prefix(text.size());
            return true;
        };
        bool ok = eol != std::string_view::npos && literal("bos=") && number(bos) && literal(" eos=") && number(eos);
        if (ok && !header.empty()) { // " stops=<int>[,<int>]..."
            ok = literal(" stops=");
            for (int id = 0; ok; ok = literal(",")) {
                ok = number(id) && stops.size() < 1024;
                if (!ok)
                    break;
                stops.push_back(id);
                if (header.empty())
                    break;
            }
        }
        if (!ok || !header.empty())
            throw Error(origin + ": embedded tokenizer header is malformed");
        if (eos < 0 && !stops.empty()) // as generation_config.json is read: the first stop id is EOS
            eos = stops.front();
        json.remove_prefix(eol + 1);
        embedded = true;
    }
    auto impl = std::make_shared<BpeTokenizer>(std::string(json), origin);
    if (embedded) {
        const bool stops_inside = std::all_of(stops.begin(), stops.end(), [&](int id) { return id >= 0 && id < impl->vocab; });
        if (bos < -1 || bos >= impl->vocab || eos < -1 || eos >= impl->vocab || !stops_inside)
            throw Error(origin + ": embedded tokenizer header names ids outside the vocabulary of " +
                        std::to_string(impl->vocab));
        impl->bos = bos;
        impl->eos = eos;
        impl->set_stops(eos, stops);
    } else if (!folder.empty()) {
        impl->read_side_files(folder);
    }
    impl->origin = origin;
    impl->bytes = std::string(kEmbeddedHeader) + "bos=" + std::to_string(impl->bos) + " eos=" + std::to_string(impl->eos);
    if (impl->stops.size() > (impl->eos >= 0 ? 1u : 0u)) { // more than EOS alone
        impl->bytes += " stops=";
        for (std::size_t i = 0; i < impl->stops.size(); ++i)
            impl->bytes += (i ? "," : "") + std::to_string(impl->stops[i]);
    }
    impl->bytes += "\n";
    impl->file_begin = impl->bytes.size();
    impl->bytes += json;
    return impl;
}

} // namespace pbllm
