"""Stage 4: how good is a map: confusion matrix, LCZ scores, HTML report, quick-look."""
