"""Texts that a LaTeX tokenizer must round-trip exactly: edge cases and a paper as the corpus writes it.

The HF export encodes them with both tokenizers and compares ids and decoded text; they are fixed
here, not generated, so the check reads the same on every machine and needs nothing from the corpus.
"""

EDGE_CASES = [
    "\\begin{equation}\n  \\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}, \\quad "
    "\\mathbb{R}^{10^{23}} \\ni x \\mapsto 3.14159\n\\end{equation}\n\n\n\nLet $\\alpha_1 \\le \\beta_{12}$.",
    "Schrödinger’s ∮ 𝔄 𝓗 ∂Ω — naïve café; 中文 テスト 한국어 עברית العربية 😀👩‍👩‍👧 e\u0301 \u200b\t\ttab\r\n"
    "    indented  two  spaces\t\tand\ttabs   \n \n\n\n\n\n end  ",
    "Digits 0 1 12 123 2024-01-31 1e-6 3.0x10^5 (v2) 007\n\\section{Results}\\label{sec:res}\n"
    "\\cite{a,b} \\ref{eq:1} \\textbf{bold} 50\\% ~ \\& \\$ \\{ \\}",
    "Literal specials stay text: <s> </s> <pad> <unk> <0x41> <0x0A> <<s>> \\<s\\>\x07\u2028",
]

PAPER = r"""\title{On Uniform Bounds for Positive Operators on $\mathbb{Z}^d$}

\begin{abstract}
We show that every positive operator $T$ on $\ell^2(\mathbb{Z}^d)$ with $\|T\|_{2 \to 2} \le 1$ satisfies a
uniform estimate for the heat semigroup $e^{-t\Delta}$, for all $t > 0$ and \emph{every} dimension $d \ge 3$.
As a consequence, the spectral gap $\lambda_1(G_n) - \lambda_0(G_n)$ of the graphs $G_n$ is bounded below by
$c\, n^{-2/d}$, improving the bound of~\cite{kato1966} by a logarithmic factor.
\end{abstract}

\section{Introduction}\label{sec:introduction}

Let $\mu_{n+1} - v_{k-1}$ denote the gap between the $n$-th and the $(k-1)$-th eigenvalue. Estimates of this
kind go back to Kato and Simon~\cite{kato1966, simon1979}; for a survey see~\cite[Chapter~3]{davies1989}.
Throughout, $C, c > 0$ are constants depending only on $d$, whose values may change from line to line, and
$A \lesssim B$ means $A \le C B$.

\subsection{Main result}

\begin{theorem}\label{thm:main}
Let $d \ge 3$ and let $T$ be positive with $\|T\| \le 1$. Then for all $x \in \mathbb{R}^{d}$ and $t > 0$,
\begin{equation}\label{eq:heat}
  \|\xi\|_{2} \geq C \sqrt{x_{n+1}} \, e^{-t} \quad \text{and} \quad
  \sum_{i=1}^{n} \tilde{\varepsilon}_i \sim \sum_{k=0}^{\infty} \left( \nabla g \right) \times \hat{\varepsilon}_k .
\end{equation}
\end{theorem}

\begin{proof}
By Lemma~\ref{lem:key} applied to $f = T g$, and by Eq.~(\ref{eq:heat}),
\begin{align}
  \langle f, e^{-t\Delta} f \rangle &= \int_{\mathbb{T}^d} |\hat f(\theta)|^2 \, e^{-t \omega(\theta)} \, d\theta \\
  &\le \sup_{\theta} e^{-t \omega(\theta)} \, \|f\|_2^2 \le \frac{C}{(1 + t)^{d/2}} \|g\|_1^2 ,
\end{align}
where $\omega(\theta) = 2 \sum_{j=1}^{d} (1 - \cos \theta_j)$. The claim follows since
$\operatorname{Var}(X) < \infty$ and $\mathbb{E}[X^2] = \sigma^2 + \mu^2$. \qedhere
\end{proof}

\section{Numerical experiments}\label{sec:experiments}

Table~\ref{tab:gaps} lists the measured gaps for $n = 10, 20, \dots, 160$ on a $64^3$ grid (double precision,
tolerance $10^{-12}$). The fitted exponent is $-0.667 \pm 0.004$, in agreement with $-2/d$ for $d = 3$.

\begin{table}[ht]
\centering
\begin{tabular}{lrr}
$n$ & gap & bound \\ \hline
10 & 0.2154 & 0.1996 \\
40 & 0.0851 & 0.0792 \\
160 & 0.0338 & 0.0314
\end{tabular}
\caption{Spectral gaps and the lower bound of Theorem~\ref{thm:main}.}\label{tab:gaps}
\end{table}

\begin{lemma}\label{lem:key}
If $0 \le a_k \le 1$ for all $k \in \mathbb{N}$, then $\prod_{k=1}^{N} (1 - a_k) \ge 1 - \sum_{k=1}^{N} a_k$.
\end{lemma}

\paragraph{Acknowledgements.} We thank the referees for comments that improved Section~\ref{sec:experiments}.
"""

PROBE_TEXTS = EDGE_CASES + [PAPER]
