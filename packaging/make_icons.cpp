// Draws the application icon at the hicolor sizes (run by the build; no binary images in the
// repository): a grid of binarized weights in two shades with a few salient ones highlighted,
// the picture of partial binarization. Usage: make_icons OUTPUT_DIR SIZE...
#include <QColor>
#include <QDir>
#include <QImage>
#include <QPainter>
#include <QPainterPath>

#include <cstdio>

int main(int argc, char** argv)
{
    if (argc < 3) {
        std::fprintf(stderr, "usage: make_icons OUTPUT_DIR SIZE...\n");
        return 2;
    }
    const QString out = QString::fromLocal8Bit(argv[1]);
    // 6 x 6 weights: 1 = +alpha, 0 = -alpha, 2 = salient (kept at high precision).
    static const int grid[6][6] = {{1, 0, 1, 1, 0, 1}, {0, 2, 1, 0, 1, 0}, {1, 1, 0, 1, 0, 1},
                                   {0, 1, 1, 0, 2, 0}, {1, 0, 0, 1, 1, 1}, {2, 1, 0, 1, 0, 0}};
    for (int i = 2; i < argc; ++i) {
        const int size = QString::fromLocal8Bit(argv[i]).toInt();
        if (size < 16 || size > 1024) {
            std::fprintf(stderr, "make_icons: size %s must be 16..1024\n", argv[i]);
            return 2;
        }
        QImage image(size, size, QImage::Format_ARGB32_Premultiplied);
        image.fill(Qt::transparent);
        QPainter p(&image);
        p.setRenderHint(QPainter::Antialiasing);
        const double s = size;
        QPainterPath background;
        background.addRoundedRect(QRectF(0.03 * s, 0.03 * s, 0.94 * s, 0.94 * s), 0.18 * s, 0.18 * s);
        p.fillPath(background, QColor(24, 40, 72));
        const double cell = 0.78 * s / 6, origin = 0.11 * s, gap = size >= 48 ? 0.12 * cell : 0.08 * cell;
        for (int r = 0; r < 6; ++r)
            for (int c = 0; c < 6; ++c) {
                const QColor color = grid[r][c] == 2 ? QColor(255, 176, 32) : grid[r][c] == 1 ? QColor(120, 170, 240) : QColor(60, 92, 150);
                p.fillRect(QRectF(origin + c * cell + gap / 2, origin + r * cell + gap / 2, cell - gap, cell - gap), color);
            }
        p.end();
        const QString dir = QStringLiteral("%1/%2x%2/apps").arg(out).arg(size);
        if (!QDir().mkpath(dir) || !image.save(dir + "/io.github.pbllm.Studio.png")) {
            std::fprintf(stderr, "make_icons: cannot write %s\n", qPrintable(dir));
            return 1;
        }
    }
    return 0;
}
