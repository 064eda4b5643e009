"""Reading committed results for people: queries, the HTML report, mask export."""
