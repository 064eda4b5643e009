"""Reading committed results: SQL views, queries, the HTML report, mask export."""
