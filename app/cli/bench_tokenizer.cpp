// pbllm bench --suite tokenizer: encoding speed of each tokenizer on the same text, one thread
// (SentencePiece, through its library, is the yardstick measured in the same run).
#include "app/cli/bench_util.h"
#include "app/cli/cli_common.h"

#include "core/error.h"
#include "core/evaluation.h"
#include "core/model_io.h"
#include "core/tokenizer.h"

#include <QDir>
#include <QFileInfo>
#include <QJsonArray>

#include <cstdio>
#include <optional>

namespace pbllm::cli {

int run_tokenizer_bench(int runs, const QStringList& tokenizer_files, const std::string& text_path, bool json)
{
    std::string text_file = text_path;
    QStringList files = tokenizer_files;
    if (files.isEmpty() || text_file.empty()) {
        // The shared folder beside the default model: tok512 and the byte-level BPE files there.
        const ModelLocation where = locate_default_model(print_progress);
        const QDir models = QFileInfo(QString::fromStdString(where.model_path)).absoluteDir().filePath("..");
        if (text_file.empty())
            text_file = QDir(models.filePath("../data/tinystories")).absoluteFilePath("tinystories_val.txt").toStdString();
        if (files.isEmpty()) {
            files << QString::fromStdString(where.tokenizer_path);
            for (const char* bpe : {"gpt2/tokenizer.json", "gpt-neox-20b/tokenizer.json", "smollm-135m/tokenizer.json"})
                if (models.exists(QString("tokenizers-bpe/") + bpe))
                    files << models.absoluteFilePath(QString("tokenizers-bpe/") + bpe);
        }
    }
    std::string text = read_text_file(text_file);
    if (text.size() > (1u << 20)) { // 1 MiB, cut at a line end so that no character is split
        const std::size_t cut = text.rfind('\n', 1u << 20);
        text.resize(cut == std::string::npos ? (1u << 20) : cut + 1);
    }

    QJsonArray rows;
    if (!json)
        std::printf("encoding %.2f MiB of %s, one thread, medians of %d runs (a fresh tokenizer each run: no warm cache)\n",
                    static_cast<double>(text.size()) / (1 << 20), text_file.c_str(), runs);
    for (const QString& file : files) {
        double load_seconds = 0.0;
        const Tokenizer tok = [&] {
            std::optional<Tokenizer> t;
            load_seconds = seconds_of([&] { t = Tokenizer::from_file(file.toStdString()); });
            return *t;
        }();
        std::size_t tokens = 0;
        const double mb_per_second = median_rate(runs, [&] {
            const Tokenizer fresh = Tokenizer::from_bytes(tok.model_bytes(), tok.origin());
            const double s = seconds_of([&] { tokens = fresh.encode(text).size(); });
            return static_cast<double>(text.size()) / 1e6 / s;
        });
        if (json) {
            rows.append(QJsonObject{{"tokenizer", file},
                                    {"kind", QString::fromStdString(tok.kind())},
                                    {"vocab_size", tok.vocab_size()},
                                    {"load_seconds", load_seconds},
                                    {"tokens", static_cast<double>(tokens)},
                                    {"mb_per_second", mb_per_second}});
        } else {
            std::printf("%-60s %-13s %6d tokens  load %5.2f s  %6.2f MB/s  %5.2f bytes/token\n",
                        qPrintable(file.right(60)), tok.kind().c_str(), static_cast<int>(tokens), load_seconds,
                        mb_per_second, static_cast<double>(text.size()) / static_cast<double>(std::max<std::size_t>(tokens, 1)));
        }
    }
    if (json)
        print_json(QJsonObject{{"text", QString::fromStdString(text_file)},
                               {"text_bytes", static_cast<double>(text.size())},
                               {"runs", runs},
                               {"tokenizers", rows}});
    return 0;
}

} // namespace pbllm::cli
