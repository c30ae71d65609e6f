"""Pictures and the HTML report of a run: ROC and Kaplan–Meier curves, results table,
tile-score heatmaps, and ``report.html`` linking them all."""
